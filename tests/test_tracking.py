"""Tracker: local run-directory files and offline W&B runs (no account, no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from tokreason.experiments.reporting.tracking import REDACTED, Tracker, redact, wandb_mode

from wandb_offline import read_offline_run

# wandb accepts keys of 40+ word characters; this one is fake and never sent anywhere.
FAKE_API_KEY = "tokreasonFakeKey" + "0" * 24 + "EnvSecret9"
CONFIG_SECRET = "cfgSecretValue-5e1d93"

CONFIG = {
    "seed": 0,
    "tokens": 4096,
    "model": {"name": "tiny", "max_tokens": 128, "tokenizer": "gpt2", "eos_token": "</s>"},
    "hub": {"repo": "org/x", "hf_token": CONFIG_SECRET},
    "services": [{"name": "s3", "secret": CONFIG_SECRET}],
    "logger": {"WANDB_API_KEY": CONFIG_SECRET, "project": "tokreason-test"},
}

WANDB_CFG = {
    "kind": "wandb",
    "project": "tokreason-test",
    "entity": None,
    "group": "grp-a",
    "name": "cpt-seed0",
    "tags": ["cpt", "test"],
    "mode": "offline",
    "job_type": "train",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module", autouse=True)
def wandb_process_state():
    """No wandb state from other test modules in, none of ours out."""
    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture(autouse=True)
def wandb_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same isolated environment for every test, so wandb's settings singleton
    (it snapshots the environment once) stays valid and its service is reused."""
    for var in list(os.environ):
        if var.startswith("WANDB_") or var == "NETRC":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # safety net: nothing here may go online
    # A credential wandb could leak into the run dir; the tests check it never does.
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)


@pytest.fixture
def fresh_wandb():
    """wandb caches settings (and the env's API key) per process: reset around tests that
    change the environment wandb reads."""
    wandb.teardown()
    yield
    wandb.teardown()


def read_finished_offline_run(run_dir: Path) -> dict:
    """run.finish() returns before wandb-core has closed the run's .wandb file (the stream
    shuts down asynchronously); wandb.teardown() waits for that, as process exit does."""
    wandb.teardown()
    return read_offline_run(run_dir)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- wandb_mode ----------------------------------------------------------------------------


def test_wandb_mode_rejects_unknown_value():
    with pytest.raises(ValueError, match=r"'cloud'.*auto, online, offline, disabled"):
        wandb_mode("cloud")


def test_wandb_mode_explicit_values_pass_through(monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("offline") == "offline"
    assert wandb_mode("disabled") == "disabled"
    assert wandb_mode("online") == "online"


@pytest.mark.parametrize(
    ("env", "expected"), [("offline", "offline"), ("disabled", "disabled"), ("dryrun", "offline"), ("online", "online")]
)
def test_wandb_mode_auto_honours_env(monkeypatch, fresh_wandb, env, expected):
    monkeypatch.setenv("WANDB_MODE", env)
    monkeypatch.delenv("WANDB_API_KEY")
    assert wandb_mode("auto") == expected


def test_wandb_mode_auto_rejects_bad_env(monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes'"):
        wandb_mode("auto")


def test_wandb_mode_auto_online_with_env_key(monkeypatch, fresh_wandb):
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode("auto") == "online"


def test_wandb_mode_auto_offline_without_credentials(monkeypatch, fresh_wandb, home):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    assert not (home / ".netrc").exists()
    assert wandb_mode("auto") == "offline"


@pytest.mark.parametrize(("machine", "expected"), [("api.wandb.ai", "online"), ("example.com", "offline")])
def test_wandb_mode_auto_reads_netrc_for_wandb_host(monkeypatch, fresh_wandb, tmp_path, machine, expected):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    user_home = tmp_path / "user"
    user_home.mkdir()
    netrc = user_home / ".netrc"
    netrc.write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(user_home))
    assert wandb_mode("auto") == expected


# --- redact ----------------------------------------------------------------------------------


def test_redact_replaces_secrets_at_any_depth_and_keeps_the_rest():
    config = {
        "api_key": "a",
        "Password": "b",
        "tokens": 10,
        "max_tokens": 20,
        "tokenizer": "gpt2",
        "eos_token": "</s>",
        "token_budget": 5,
        "nested": {"deeper": {"HF_TOKEN": "c", "openaiApiKey": "d", "db-passwd": "e", "keep": 1}},
        "list": [{"client_secret": "f", "auth_token": "g", "access_token": "h", "x": [1, 2]}],
        "wandb_key": "i",
        "unset_api_key": None,
    }
    out = redact(config)
    assert out == {
        "api_key": REDACTED,
        "Password": REDACTED,
        "tokens": 10,
        "max_tokens": 20,
        "tokenizer": "gpt2",
        "eos_token": "</s>",
        "token_budget": 5,
        "nested": {"deeper": {"HF_TOKEN": REDACTED, "openaiApiKey": REDACTED, "db-passwd": REDACTED, "keep": 1}},
        "list": [{"client_secret": REDACTED, "auth_token": REDACTED, "access_token": REDACTED, "x": [1, 2]}],
        "wandb_key": REDACTED,
        "unset_api_key": None,
    }
    # A deep copy: the input is untouched and shares nothing with the output.
    assert config["nested"]["deeper"]["HF_TOKEN"] == "c"
    out["list"][0]["x"].append(3)
    assert config["list"][0]["x"] == [1, 2]


def test_redact_turns_omegaconf_into_plain_resolved_data():
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "hub": {"hf_token": "zzz"}, "l": [{"secret": "s"}]})
    out = redact(cfg)
    assert out == {"a": 1, "b": 1, "hub": {"hf_token": REDACTED}, "l": [{"secret": REDACTED}]}
    assert type(out) is dict and type(out["hub"]) is dict and type(out["l"]) is list


# --- Tracker -----------------------------------------------------------------------------------


def assert_no_secret_anywhere(run_dir: Path) -> list[Path]:
    """Every file under run_dir, symlinks followed (wandb links its core log from the cache)."""
    scanned = []
    for root, _dirs, files in os.walk(run_dir, followlinks=True):
        for name in files:
            path = Path(root) / name
            data = path.read_bytes()
            assert FAKE_API_KEY.encode() not in data, f"W&B API key leaked into {path}"
            assert CONFIG_SECRET.encode() not in data, f"config secret leaked into {path}"
            scanned.append(path)
    return scanned


def test_tracker_wandb_offline_end_to_end(tmp_path):
    # The fake key really is in wandb's settings, so the leak check below means something.
    from wandb.sdk import wandb_setup

    run_dir = tmp_path / "run"
    tracker = Tracker(run_dir, WANDB_CFG, CONFIG)
    assert wandb_setup.singleton().settings.api_key == FAKE_API_KEY
    steps = [(0, 2.5, 0.1), (10, 1.25, 0.30000000000000004), (20, 0.625, 1 / 3)]
    for step, loss, lr in steps:
        tracker.log(step, {"loss": loss, "lr": lr}, timing={"step_time_s": 0.01 * (step + 1)})
    tracker.log(25, {"loss": 0.5})  # no timing: metrics only
    summary = {"final": {"loss": 0.5, "bench": {"acc": 0.75}}, "tokens_seen": 123456}
    tracker.log_summary(summary)
    run_id = tracker.wandb_run_id
    tracker.finish()
    tracker.finish()  # idempotent
    tracker.log(30, {"loss": 0.0})  # ignored after finish

    # Local files.
    assert (run_dir / "metrics.jsonl").read_text() == (
        '{"step": 0, "loss": 2.5, "lr": 0.1}\n'
        '{"step": 10, "loss": 1.25, "lr": 0.30000000000000004}\n'
        '{"step": 20, "loss": 0.625, "lr": 0.3333333333333333}\n'
        '{"step": 25, "loss": 0.5}\n'
    )
    assert read_lines(run_dir / "metrics.jsonl")[2]["lr"] == 1 / 3  # exact round trip
    assert read_lines(run_dir / "timing.jsonl") == [
        {"step": 0, "step_time_s": 0.01},
        {"step": 10, "step_time_s": 0.11},
        {"step": 20, "step_time_s": 0.21},
    ]
    assert (run_dir / "summary.json").read_text() == json.dumps(summary, indent=2, sort_keys=True) + "\n"
    assert run_id and (run_dir / "wandb_run_id").read_text().strip() == run_id

    # What wandb recorded.
    offline = read_finished_offline_run(run_dir)
    assert offline["run_id"] == run_id
    assert (offline["project"], offline["group"], offline["name"]) == ("tokreason-test", "grp-a", "cpt-seed0")
    assert offline["tags"] == ["cpt", "test"]
    assert offline["config"] == redact(CONFIG)
    assert offline["config"]["hub"]["hf_token"] == REDACTED
    assert offline["config"]["model"] == CONFIG["model"]
    history = [{k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in offline["history"]]
    assert history == [
        {"_step": 0, "loss": 2.5, "lr": 0.1, "step_time_s": 0.01},
        {"_step": 10, "loss": 1.25, "lr": 0.30000000000000004, "step_time_s": 0.11},
        {"_step": 20, "loss": 0.625, "lr": 1 / 3, "step_time_s": 0.21},
        {"_step": 25, "loss": 0.5},
    ]
    assert offline["summary"]["final/loss"] == 0.5
    assert offline["summary"]["final/bench/acc"] == 0.75
    assert offline["summary"]["tokens_seen"] == 123456

    # No secret in any file, wandb's included.
    scanned = assert_no_secret_anywhere(run_dir)
    assert any(p.suffix == ".wandb" for p in scanned)
    assert any(p.name == "debug.log" for p in scanned)


def test_tracker_resume_truncates_and_reuses_wandb_run(tmp_path):
    run_dir = tmp_path / "run"

    def metrics(step: int) -> dict[str, float]:
        return {"loss": 1.0 / step}

    first = Tracker(run_dir, WANDB_CFG, CONFIG)
    for step in range(1, 6):
        first.log(step, metrics(step), timing={"t": 0.5 * step})
    first.finish()
    run_id = first.wandb_run_id
    full_metrics = (run_dir / "metrics.jsonl").read_text()
    # A crash mid-write leaves a partial last line; resuming must drop it.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')

    resumed = Tracker(run_dir, WANDB_CFG, CONFIG, resume_step=3)
    assert resumed.wandb_run_id == run_id
    assert (run_dir / "metrics.jsonl").read_text() == "".join(full_metrics.splitlines(keepends=True)[:3])
    assert [r["step"] for r in read_lines(run_dir / "timing.jsonl")] == [1, 2, 3]
    for step in range(4, 6):
        resumed.log(step, metrics(step), timing={"t": 0.5 * step})
    resumed.log_summary({"loss": 0.2})
    resumed.finish()
    # Re-logging the same steps gives the same bytes as the uninterrupted run.
    assert (run_dir / "metrics.jsonl").read_text() == full_metrics
    assert [r["step"] for r in read_lines(run_dir / "timing.jsonl")] == [1, 2, 3, 4, 5]

    offline_dirs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_dirs) == 2 and all(f"-{run_id}" in d.name for d in offline_dirs)
    offline = read_finished_offline_run(run_dir)
    assert offline["run_id"] == run_id
    assert [row["_step"] for row in offline["history"]] == [1, 2, 3, 4, 5, 4, 5]

    # A fresh start in the same directory is a new run: old lines, summary and W&B id go.
    fresh = Tracker(run_dir, WANDB_CFG, CONFIG)
    assert fresh.wandb_run_id != run_id
    assert (run_dir / "metrics.jsonl").read_text() == ""
    assert (run_dir / "timing.jsonl").read_text() == ""
    assert not (run_dir / "summary.json").exists()
    fresh.finish()
    assert (run_dir / "wandb_run_id").read_text().strip() == fresh.wandb_run_id


@pytest.mark.parametrize(
    "logger_cfg", [{"kind": "none"}, {**WANDB_CFG, "mode": "disabled"}], ids=["kind-none", "wandb-disabled"]
)
def test_tracker_without_wandb_writes_files_only(tmp_path, logger_cfg):
    run_dir = tmp_path / "run"
    tracker = Tracker(run_dir, logger_cfg, CONFIG)
    assert tracker.wandb_run_id is None
    tracker.log(1, {"loss": 0.5}, timing={"t": 1.0})
    tracker.log_summary({"loss": 0.5})
    tracker.finish()
    assert read_lines(run_dir / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    assert read_lines(run_dir / "timing.jsonl") == [{"step": 1, "t": 1.0}]
    assert json.loads((run_dir / "summary.json").read_text()) == {"loss": 0.5}
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "summary.json", "timing.jsonl"]


def test_tracker_on_other_processes_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    tracker = Tracker(run_dir, WANDB_CFG, CONFIG, is_main_process=False, resume_step=1)
    tracker.log(2, {"loss": 1.0}, timing={"t": 1.0})
    tracker.log_summary({"loss": 1.0})
    tracker.finish()
    assert tracker.wandb_run_id is None
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

    other = tmp_path / "other"
    Tracker(other, WANDB_CFG, CONFIG, is_main_process=False).log(0, {"loss": 1.0})
    assert not other.exists()


def test_tracker_rejects_misuse(tmp_path):
    tracker = Tracker(tmp_path / "run", {"kind": "none"}, CONFIG)
    with pytest.raises(ValueError, match="reserved"):
        tracker.log(1, {"step": 3.0})
    with pytest.raises(ValueError, match="share keys"):
        tracker.log(1, {"loss": 1.0}, timing={"loss": 2.0})
    tracker.finish()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="unknown logger kind 'tensorboard'"):
        Tracker(tmp_path / "run2", {"kind": "tensorboard"}, CONFIG)


def test_tracker_wandb_init_failure_is_one_line_runtime_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"^wandb\.init failed \(mode=offline\): [^\n]*64 characters") as info:
        Tracker(tmp_path / "run", {**WANDB_CFG, "tags": ["x" * 100]}, CONFIG)
    assert "\n" not in str(info.value)


def test_tracker_online_without_credentials_fails_before_wandb_init(monkeypatch, fresh_wandb, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(RuntimeError, match="no W&B credentials"):
        Tracker(tmp_path / "run", {**WANDB_CFG, "mode": "online"}, CONFIG)
    assert not (tmp_path / "run" / "wandb").exists()
