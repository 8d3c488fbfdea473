"""`lmgym push`: upload a finished run's ``final/`` (weights, tokenizer, model card, reward plot) to a model
repository on the Hugging Face hub, creating the repository if it does not exist.

Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable) it stops with one error before anything is created or
sent, instead of leaving a repository half made.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmgym.data.hub import hub_reachable
from lmgym.errors import HubError, MissingFileError
from lmgym.tracking import RunDir


def hub_offline() -> str | None:
    """Why the hub cannot be used now, or None."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if flag or constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    if not hub_reachable():
        return f"the hub ({constants.ENDPOINT}) cannot be reached from this machine"
    return None


def push_run(run: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``run``'s final/ to the model repository ``repo_id`` (made private with ``private`` when it is
    created); returns the repository's URL."""
    run_dir = RunDir(Path(run))
    run_dir.final_model()  # the run has finished
    folder = run_dir.final
    if not (folder / "README.md").exists():
        raise MissingFileError(f"{folder} has no README.md (model card); it was written by an older lmgym")
    why = hub_offline()
    if why is not None:
        raise HubError(f"cannot push {folder} to {repo_id}: {why}. Nothing was uploaded")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"lmgym run {run_dir.root.name}",
        )
    except LocalTokenNotFoundError:
        raise HubError(f"pushing to {repo_id} needs a hub token: `hf auth login`, or set HF_TOKEN") from None
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"the hub refused the push to {repo_id}: {err}") from err
    return str(url)
