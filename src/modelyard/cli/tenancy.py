"""``modelyard tenants``, ``modelyard keys`` and ``modelyard usage``.

Everything but ``keys rotate-master`` talks to the server through the SDK. Rotating the master
key is an offline operation on the data folder (stop the server first): it re-wraps every data
key under the new master key without re-encrypting the artifacts.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli._common import client, handles_errors, out, print_json, print_table

__all__ = ["tenants_app", "keys_app", "usage_app"]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

tenants_app = typer.Typer(
    name="tenants", help="Create, list, disable and delete tenants and set their quotas (admin keys).",
    no_args_is_help=True, rich_markup_mode="markdown",
)
keys_app = typer.Typer(
    name="keys", help="Create, list and revoke API keys; rotate the master key of encryption at rest.",
    no_args_is_help=True, rich_markup_mode="markdown",
)
usage_app = typer.Typer(name="usage", help="Usage per tenant, model and hour, with cost.", rich_markup_mode="markdown")

_QUOTA_HELP = (
    "requests_per_second, requests_per_day, tokens_per_day, stored_bytes, concurrent_jobs, training_hours_per_month"
)


def _quotas(pairs: list[str] | None) -> dict[str, float | None] | None:
    if not pairs:
        return None
    out_: dict[str, float | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--quota")
        try:
            number = None if value in ("", "none", "unlimited") else float(value)
        except ValueError:
            raise typer.BadParameter(f"{key}: {value!r} is not a number", param_hint="--quota") from None
        out_[key] = number if number is None or key == "training_hours_per_month" else _number(number)
    return out_


QuotaOpt = Annotated[list[str] | None, typer.Option("--quota", "-q", help=f"NAME=VALUE ({_QUOTA_HELP}); repeatable")]


@tenants_app.command("create")
@handles_errors
def tenants_create(name: str, quota: QuotaOpt = None, json_out: JsonFlag = False) -> None:
    """Create a tenant. Example: `modelyard tenants create acme -q requests_per_day=10000`"""
    t = client().tenants.create(name, quotas=_quotas(quota))
    if json_out:
        print_json(t.to_dict())
    else:
        out().print(f"Created tenant [bold]{t.name}[/bold] ({t.id})", highlight=False)


@tenants_app.command("list")
@handles_errors
def tenants_list(json_out: JsonFlag = False) -> None:
    """List tenants."""
    items = list(client().tenants.list())
    if json_out:
        print_json([t.to_dict() for t in items])
        return
    print_table(
        ["name", "disabled", "quotas", "id"],
        ([t.name, t.disabled, "\n".join(f"{k}={_number(v)}" for k, v in t.quotas.items() if v is not None) or "-", t.id]
         for t in items),
        empty="no tenants",
        whole=("name", "quotas"),  # a quota a line, never cut (the id gives way first; --json has it whole)
    )


def _number(value: float) -> int | float:
    """A quota as typed: 100000 (not 100000.0), 2.5 as it is."""
    return int(value) if float(value).is_integer() else value


@tenants_app.command("update")
@handles_errors
def tenants_update(
    name: str,
    quota: QuotaOpt = None,
    disable: Annotated[bool | None, typer.Option("--disable/--enable", help="Disable or enable.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Disable/enable a tenant or change its quotas (`-q tokens_per_day=none` for unlimited)."""
    t = client().tenants.update(name, disabled=disable, quotas=_quotas(quota))
    if json_out:
        print_json(t.to_dict())
    else:
        out().print(f"Updated tenant [bold]{t.name}[/bold] (disabled: {t.disabled})", highlight=False)


@tenants_app.command("disable")
@handles_errors
def tenants_disable(name: str) -> None:
    """Disable a tenant: its keys stop working at once."""
    client().tenants.disable(name)
    out().print(f"Disabled tenant {name}", highlight=False)


@tenants_app.command("delete")
@handles_errors
def tenants_delete(
    name: str, force: Annotated[bool, typer.Option("--force", help="Also delete its models and keys.")] = False
) -> None:
    """Delete a tenant (refused while it owns models, unless --force)."""
    client().tenants.delete(name, force=force)
    out().print(f"Deleted tenant {name}", highlight=False)


@keys_app.command("create")
@handles_errors
def keys_create(
    role: Annotated[str, typer.Option("--role", "-r", help="admin | owner | developer | viewer | inference")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    tenant: Annotated[str | None, typer.Option(help="Admins: the tenant of the key.")] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Model/deployment name; repeatable.")] = None,
    rate_limit: Annotated[float | None, typer.Option(
        help="Requests per second, over the whole cluster (the servers sharing the database split it).")] = None,
    expires_in: Annotated[float | None, typer.Option(help="Seconds until the key expires.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create an API key; its secret is printed once."""
    created = client().keys.create(
        role, name=name, tenant=tenant, scopes=scope, rate_limit=rate_limit, expires_in_s=expires_in
    )
    if json_out:
        print_json({**created.key.to_dict(), "secret": created.secret})
        return
    out().print(f"Created {created.key.role} key {created.key.prefix} ({created.key.id}). "
                "The secret is shown only now:", highlight=False)
    out().print(f"\n    {created.secret}\n", highlight=False, soft_wrap=True)


@keys_app.command("list")
@handles_errors
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Admins: only this tenant.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """List API keys (prefixes only)."""
    items = client().keys.list(tenant=tenant, include_revoked=all_)
    if json_out:
        print_json([k.to_dict() for k in items])
        return
    print_table(
        ["prefix", "role", "name", "scopes", "req/s", "expires", "revoked"],
        ([k.prefix, k.role, k.name, ",".join(k.scopes) or "-", k.rate_limit,
          k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at else None,
          "yes" if k.revoked_at else None] for k in items),
        empty="no keys",
        whole=("prefix",),
    )


@keys_app.command("revoke")
@handles_errors
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix.")]) -> None:
    """Revoke a key: it stops working at once."""
    client().keys.revoke(key)
    out().print(f"Revoked {key}", highlight=False)


@keys_app.command("rotate-master")
def keys_rotate_master(
    new_key_file: Annotated[Path, typer.Option(help="File holding the new master key.", exists=True, dir_okay=False)],
    home: Annotated[Path | None, typer.Option(help="Data folder (default: MODELYARD_HOME).")] = None,
) -> None:
    """Re-wrap every artifact data key under a new master key (offline; stop the server first).

    The current key comes from MODELYARD_MASTER_KEY / MODELYARD_MASTER_KEY_FILE. Afterwards
    start the server with the new key. Safe to re-run after an interruption.
    """
    from modelyard.config import Settings
    from modelyard.errors import ModelYardError
    from modelyard.store.encryption import derive_master_key, open_encryption

    settings = Settings().with_overrides(home=home)
    current = settings.master_key.get_secret_value() if settings.master_key else None
    root = settings.resolved_artifact_root
    try:
        enc = open_encryption(root, master_key=current, master_key_file=settings.master_key_file)
        if enc is None:
            raise typer.BadParameter("no current master key is configured (MODELYARD_MASTER_KEY)")
        count = enc.rotate(derive_master_key(new_key_file.read_text().strip()))
    except ModelYardError as exc:
        from modelyard.cli._common import show_error

        show_error(exc)
        raise typer.Exit(exc.exit_code) from None
    out().print(f"Re-wrapped {count} data key(s) under the new master key.", highlight=False)


@usage_app.callback(invoke_without_command=True)
@handles_errors
def usage(
    tenant: Annotated[str | None, typer.Option(help="Admins: only this tenant.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model or deployment.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time (ISO 8601).")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Usage per tenant, model and hour, with a bar chart of requests and the cost."""
    c = client()
    if csv_out:
        out().print(c.usage.csv(tenant=tenant, model=model, start=since, end=until), end="", highlight=False)
        return
    report = c.usage.report(tenant=tenant, model=model, start=since, end=until)
    if json_out:
        print_json({"items": [r.to_dict() for r in report.records], "totals": report.totals})
        return
    if not report.records:
        out().print("no usage recorded", highlight=False)
        return
    from rich.table import Table

    top = max(r.requests for r in report.records) or 1
    tenants = len({r.tenant for r in report.records}) > 1
    tokens = any(r.input_tokens or r.output_tokens for r in report.records)
    table = Table(header_style="bold", show_edge=False, pad_edge=False, box=None)
    columns = ["hour (UTC)", *(["tenant"] if tenants else []), "model", "requests", "errors",
               *(["tokens in/out"] if tokens else []), "compute s", "cost"]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for r in report.records:
        bar = "█" * max(1, round(16 * r.requests / top)) if r.requests else ""
        table.add_row(
            r.hour.strftime("%m-%d %H:00") if r.hour else "-", *([r.tenant] if tenants else []), r.model,
            f"[cyan]{bar}[/cyan] {r.requests}", str(r.errors),
            *([f"{r.input_tokens}/{r.output_tokens}"] if tokens else []), f"{r.compute_s:.3f}", f"{r.cost:.4f}",
        )
    out().print(table)
    t = report.totals
    out().print(f"total: {int(t['requests'])} requests, {int(t['errors'])} errors, "
                f"{t['compute_s']:.3f} compute s, cost {t['cost']:.4f}", highlight=False)
