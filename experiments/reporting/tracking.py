"""Experiment tracking for one training run.

Local files in the run directory are always written (``metrics.jsonl``, ``timing.jsonl``,
``summary.json``, ``wandb_run_id``); Weights & Biases is optional. Only the main process
writes or talks to W&B; elsewhere every method is a no-op.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokreason.experiments.files import atomic_write_text, flatten

METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_RUN_ID_FILE = "wandb_run_id"

REDACTED = "<redacted>"
_MODES = ("auto", "online", "offline", "disabled")
# What WANDB_MODE may hold (wandb's own values), mapped to what we pass to wandb.init.
_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
    "shared": "shared",
}
# Key names (lower-case, letters and digits only) that hold secrets, matched as a suffix
# so "openai_api_key" and "wandbApiKey" match while "tokens", "max_tokens", "tokenizer"
# and "eos_token" do not.
_SECRET_SUFFIXES = (
    "apikey",
    "secret",
    "password",
    "passwd",
    "accesstoken",
    "authtoken",
    "hftoken",
    "wandbkey",
)


def wandb_mode(requested: str) -> str:
    """The W&B mode to run in; "auto" never prompts and never needs an account.

    "auto": WANDB_MODE if set, else "online" when W&B credentials are configured
    (WANDB_API_KEY, the netrc entry for the W&B host, ...), else "offline".
    """
    if requested not in _MODES:
        raise ValueError(f"unknown W&B mode {requested!r}; valid: {', '.join(_MODES)}")
    if requested != "auto":
        return requested
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        if env_mode not in _ENV_MODES:
            raise ValueError(
                f"unknown WANDB_MODE={os.environ['WANDB_MODE']!r}; valid: {', '.join(_ENV_MODES)}"
            )
        return _ENV_MODES[env_mode]
    return "online" if _wandb_credentials_configured() else "offline"


def _wandb_credentials_configured() -> bool:
    """Whether wandb would find credentials without prompting (no network call).

    Uses wandb's own lookup (session key, WANDB_API_KEY / WANDB_IDENTITY_TOKEN_FILE,
    the netrc entry for the configured API host, the settings-file api_key) with
    prompting, verification and session updates all off.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup

    try:
        from wandb.sdk.lib import wbauth
    except ImportError:  # wandb < 0.2x has no wbauth: same order, done by hand
        return _credentials_configured_fallback()

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    try:
        auth = wbauth.authenticate_session(
            host=host,
            source="tokreason",
            prompt=False,
            verify=False,
            update_session=False,
        )
    except AuthenticationError:
        # A key is configured but malformed: the user means to go online, and
        # wandb.init will then say exactly what is wrong with it.
        return True
    return auth is not None


def _credentials_configured_fallback() -> bool:
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        creds = netrc.netrc(str(path)).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(creds and creds[2])


def _is_secret_key(key: Any) -> bool:
    normalized = re.sub(r"[^a-z0-9]", "", str(key).lower())
    return normalized.endswith(_SECRET_SUFFIXES)


def redact(config: Mapping) -> dict:
    """Deep copy of a config with secret-looking values replaced by "<redacted>".

    Mappings become dicts and lists/tuples lists, so an OmegaConf container (whose
    items resolve on access) also comes out as plain data. Unset secrets (None) stay None.
    """
    return _redact(config)


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _is_secret_key(k) and v is not None else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return [_redact(v) for v in value]
    return copy.deepcopy(value)


def _json_default(value: Any) -> Any:
    # numpy / torch scalars: .item() gives the exact Python number.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(record: Mapping) -> str:
    return json.dumps(record, default=_json_default)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines with "step" <= last_step, byte for byte; drop the rest.

    A line that does not parse (the tail of a write cut short by a crash) is dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


class Tracker:
    """Logs one run to its run directory and, optionally, to W&B."""

    def __init__(
        self,
        run_dir: Path,
        logger_cfg: Mapping,
        config: Mapping,
        is_main_process: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self._active = is_main_process
        self._run: Any = None  # wandb.Run when W&B is on
        self._metrics_file = None
        self._timing_file = None
        self._finished = False
        if not self._active:
            return

        kind = logger_cfg.get("kind", "none")
        if kind not in ("wandb", "none"):
            raise ValueError(f"unknown logger kind {kind!r}; valid: wandb, none")
        self.run_dir.mkdir(parents=True, exist_ok=True)

        if resume_step is not None:
            for name in (METRICS_FILE, TIMING_FILE):
                _truncate_jsonl(self.run_dir / name, resume_step)
        else:
            # A fresh start: what an earlier attempt here left must not pass for this run's
            # (metrics/timing are truncated on open below).
            for name in (SUMMARY_FILE, WANDB_RUN_ID_FILE):
                (self.run_dir / name).unlink(missing_ok=True)

        if kind == "wandb":
            mode = wandb_mode(logger_cfg.get("mode", "auto"))
            if mode != "disabled":
                self._run = self._init_wandb(logger_cfg, config, mode, resume_step)

        file_mode = "a" if resume_step is not None else "w"
        self._metrics_file = open(self.run_dir / METRICS_FILE, file_mode, encoding="utf-8")
        self._timing_file = open(self.run_dir / TIMING_FILE, file_mode, encoding="utf-8")

    def _init_wandb(
        self, logger_cfg: Mapping, config: Mapping, mode: str, resume_step: int | None
    ) -> Any:
        import wandb

        if mode in ("online", "shared") and not _wandb_credentials_configured():
            # wandb.init would otherwise prompt for a key on a terminal.
            raise RuntimeError(
                f"W&B mode is {mode} but no W&B credentials are configured: "
                "set WANDB_API_KEY or run `wandb login`, or use logger.mode=offline"
            )

        id_path = self.run_dir / WANDB_RUN_ID_FILE
        run_id = None
        if resume_step is not None and id_path.exists():
            run_id = id_path.read_text(encoding="utf-8").strip() or None

        tags = logger_cfg.get("tags") or []
        try:
            run = wandb.init(
                project=logger_cfg.get("project"),
                entity=logger_cfg.get("entity"),
                group=logger_cfg.get("group"),
                name=logger_cfg.get("name"),
                tags=[str(t) for t in tags],
                job_type=logger_cfg.get("job_type"),
                config=redact(config),
                dir=str(self.run_dir),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                # One run per process at a time, and it is the global wandb.run (so
                # wandb.log and integrations reach it); a stale unfinished run is closed.
                reinit="finish_previous",
                settings=wandb.Settings(
                    console="off",  # no stdout/stderr capture: it may carry anything
                    quiet=True,
                ),
            )
        except Exception as e:  # noqa: BLE001 - any init failure must stop the run loudly
            message = " ".join(str(e).split()) or type(e).__name__
            raise RuntimeError(f"wandb.init failed (mode={mode}): {message}") from e

        atomic_write_text(id_path, run.id + "\n")
        return run

    @property
    def wandb_run_id(self) -> str | None:
        return self._run.id if self._run is not None else None

    def log(
        self, step: int, metrics: Mapping[str, float], timing: Mapping[str, float] | None = None
    ) -> None:
        if not self._active or self._finished:
            return
        timing = timing or {}
        if "step" in metrics or "step" in timing:
            raise ValueError("'step' is reserved: pass it as the step argument")
        if shared := sorted(set(metrics) & set(timing)):
            raise ValueError(f"metrics and timing share keys: {shared}")
        self._metrics_file.write(_dumps({"step": step, **metrics}) + "\n")
        self._metrics_file.flush()
        if timing:
            self._timing_file.write(_dumps({"step": step, **timing}) + "\n")
            self._timing_file.flush()
        if self._run is not None:
            self._run.log({**metrics, **timing}, step=step)

    def log_summary(self, summary: Mapping) -> None:
        if not self._active or self._finished:
            return
        text = json.dumps(summary, indent=2, sort_keys=True, default=_json_default) + "\n"
        atomic_write_text(self.run_dir / SUMMARY_FILE, text)
        if self._run is not None:
            self._run.summary.update(flatten({k: v for k, v in summary.items() if k != "eval"}, "/"))
            if summary.get("eval"):
                self.log_eval(summary["eval"])

    def log_eval(self, table: Mapping) -> None:
        """The benchmark table: delta/<benchmark>/<metric> in the run summary, the rows as a W&B table."""
        if not self._active or self._finished or self._run is None:
            return
        import wandb

        from tokreason.experiments.evaluation.table import TABLE_COLUMNS, wandb_deltas

        self._run.summary.update(wandb_deltas(table))
        rows = [[r.get(c) for c in TABLE_COLUMNS] for r in table["rows"]]
        self._run.log({"eval/table": wandb.Table(columns=TABLE_COLUMNS, data=rows)})

    def log_report(self, folder: Path) -> None:
        """A comparison report: its images, and report.md as text, in this (the group's report) run."""
        if not self._active or self._finished or self._run is None:
            return
        import wandb

        folder = Path(folder)
        logged: dict[str, Any] = {f"report/{png.stem}": wandb.Image(str(png)) for png in sorted(folder.glob("*.png"))}
        if (folder / "report.md").exists():
            logged["report/markdown"] = wandb.Html("<pre>" + (folder / "report.md").read_text()
                                                   .replace("&", "&amp;").replace("<", "&lt;") + "</pre>")
        self._run.log(logged)

    def finish(self, exit_code: int | None = None) -> None:
        """Close the files and the W&B run (exit_code != 0 marks it failed). Idempotent."""
        if not self._active or self._finished:
            return
        self._finished = True
        try:
            for f in (self._metrics_file, self._timing_file):
                if f is not None:
                    f.close()
        finally:
            if self._run is not None:
                self._run.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type is not None else None)
