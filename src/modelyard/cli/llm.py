"""``modelyard llm``: language and embedding models (Hugging Face folders, upstream engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli._common import client, escape, handles_errors, human_bytes, out, print_json

__all__ = ["app"]

app = typer.Typer(
    name="llm",
    help=(
        "Language and embedding models served over the OpenAI API (`/v1`).\n\n"
        "Push a Hugging Face folder or archive with `push-hf`, put an OpenAI-compatible engine "
        "(vLLM, Ollama, TGI, another ModelYard) behind ModelYard with `upstream`, try a model with "
        "`chat` or `embed`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("push-hf")
@handles_errors
def push_hf(
    path: Annotated[Path, typer.Argument(help="A model folder (config.json, tokenizer, *.safetensors) or a .tar/.tar.gz/.zip of one.", exists=True)],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name; created if new.")],
    task: Annotated[str | None, typer.Option(help="text-generation | embeddings | text-classification (default: from config.json).")] = None,
    stage: Annotated[str, typer.Option(help="none | staging | production | archived")] = "none",
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Upload a Hugging Face model as the next version of a model.

    Only safetensors weights are accepted; folders asking for remote code are refused.

    Examples:

        modelyard llm push-hf ./gpt2-small --name gpt2

        modelyard llm push-hf minilm.tar.gz --name minilm --task embeddings --stage production
    """
    with client() as sdk:
        version = sdk.llm.push_hf(path, name=name, task=task, description=description, stage=stage)
    if json_out:
        print_json(version.to_dict())
        return
    out().print(
        f"Pushed [bold]{escape(version.model)}[/bold] version [bold]{version.version}[/bold] "
        f"as {version.format} ({human_bytes(version.size_bytes)}, sha256 {version.sha256[:12]}).",
        highlight=False,
    )


@app.command("upstream")
@handles_errors
def upstream(
    name: Annotated[str, typer.Argument(help="Model name in ModelYard.")],
    base_url: Annotated[str, typer.Option("--base-url", help="The engine's OpenAI base URL, e.g. http://127.0.0.1:8001/v1.")],
    upstream_model: Annotated[str, typer.Option("--upstream-model", help="The model name the engine knows.")],
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="MODELYARD_UPSTREAM_API_KEY", help="The engine's key; kept on the server.")] = None,
    stage: Annotated[str, typer.Option(help="none | staging | production | archived")] = "none",
    json_out: JsonFlag = False,
) -> None:
    """Register an OpenAI-compatible engine as the next version of a model.

    The engine's host must be in the server's allow-list (MODELYARD_UPSTREAM_ALLOW_HOSTS).

    Examples:

        modelyard llm upstream llama --base-url http://127.0.0.1:11434/v1 --upstream-model llama3.2
    """
    with client() as sdk:
        version = sdk.llm.add_upstream(name, base_url=base_url, upstream_model=upstream_model,
                                       api_key=api_key, stage=stage)
    if json_out:
        print_json(version.to_dict())
        return
    out().print(f"Registered [bold]{escape(name)}[/bold] version [bold]{version.version}[/bold] "
                f"-> {escape(base_url)} ({escape(upstream_model)}).", highlight=False)


@app.command("models")
@handles_errors
def models(json_out: JsonFlag = False) -> None:
    """List the models `/v1` serves to your key.

    Examples:

        modelyard llm models
    """
    with client() as sdk:
        ids = sdk.llm.models()
    if json_out:
        print_json(ids)
        return
    for model_id in ids:
        out().print(escape(model_id), highlight=False)


@app.command("chat")
@handles_errors
def chat(
    model: Annotated[str, typer.Argument(help="Model name.")],
    message: Annotated[str, typer.Argument(help="The user message.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    json_out: JsonFlag = False,
) -> None:
    """Send one chat message and print the reply.

    Examples:

        modelyard llm chat gpt2 "Write a haiku about batching" --max-tokens 40
    """
    with client() as sdk:
        result = sdk.llm.chat(model, [{"role": "user", "content": message}], max_tokens=max_tokens,
                              temperature=temperature)
    if json_out:
        print_json(result)
        return
    out().print(result["choices"][0]["message"]["content"], highlight=False, markup=False)


@app.command("embed")
@handles_errors
def embed(
    texts: Annotated[list[str], typer.Argument(help="One or more texts.")],
    model: Annotated[str, typer.Option(help="Embedding model.")] = "all-minilm-l6-v2",
) -> None:
    """Print embedding vectors as JSON (one list per text).

    Examples:

        modelyard llm embed "hello world" "good morning"
    """
    with client() as sdk:
        print_json(sdk.llm.embed(model, list(texts)))
