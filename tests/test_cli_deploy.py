"""``vfl deploy``: every subcommand's help, the files ``certs``, ``split`` and ``job-config``
write, the bad input each one refuses with what to do, and the shared ``flwr run`` step
(:func:`vfl.deploy.local.flwr_run`) against a stand-in ``flwr`` script. No Flower process is
started here; the real SuperLink/SuperNode runs are in the deployment tests marked slow.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509

from scenarios import hospital_lab_pharmacy
from scenarios.cli import _result_rows, main
from vfl.core.errors import ConfigError
from vfl.core.table import PartyTable
from vfl.deploy import local
from vfl.deploy.local import (
    DeploymentError,
    LocalFederation,
    ResultOnSuperLinkError,
    flwr_run,
    write_connection,
)

SUBCOMMANDS = {
    "certs": ["ca.pem", "server.key", "--host"],
    "superlink": ["--certs", "--insecure", "--port", "every organization's node"],
    "node": ["--party", "--data", "--id-column", "--peer-key", "SuperNode"],
    "run": ["--superlink", "--job", "--config", "--result", "SuperLink's machine"],
    "job-config": ["hospital_lab_pharmacy", "--protocol", "TrainConfig"],
    "split": ["NAME.csv", "label column", "--dataset"],
    "local": ["--quick", "--insecure", "--workdir", "bitwise equal"],
}


def vfl(*argv) -> int:
    return main(["deploy", *map(str, argv)])


# -- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exc:
        vfl(command, "--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: vfl deploy {command}")
    text = " ".join(text.split())
    for phrase in SUBCOMMANDS[command]:
        assert phrase in text, (command, phrase)


def test_deploy_help_lists_the_commands_and_vfl_help_lists_deploy(capsys):
    with pytest.raises(SystemExit) as exc:
        vfl("--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in SUBCOMMANDS) and "Run it across machines" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "deploy" in capsys.readouterr().out


def test_node_is_exactly_the_node_launcher(capsys):
    """`vfl deploy node` takes vfl.deploy.node's own arguments (one parser, not a copy)."""
    from vfl.deploy.node import build_parser

    with pytest.raises(SystemExit):
        vfl("node", "--help")
    ours = capsys.readouterr().out
    theirs = build_parser().format_help()
    options = {w for w in theirs.split() if w.startswith("--")}
    assert options and options <= set(ours.split())


# -- certs ---------------------------------------------------------------------------------
def _san(path: Path):
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert, cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_certs_writes_a_ca_and_a_superlink_certificate_for_localhost(tmp_path, capsys):
    d = tmp_path / "certs"
    assert vfl("certs", d) == 0
    out = capsys.readouterr().out
    for name in ("ca.pem", "server.pem", "server.key"):
        assert (d / name).is_file() and name in out
    assert "SuperLink's host only" in out
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert, san = _san(d / "server.pem")
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE((d / "server.key").stat().st_mode) == 0o600


def test_certs_refuses_to_replace_a_ca_unless_forced(tmp_path, capsys):
    d = tmp_path / "certs"
    assert vfl("certs", d) == 0
    before = (d / "ca.pem").read_bytes()
    assert vfl("certs", d, "--host", "coord.example.org") == 2
    assert "--force" in capsys.readouterr().err
    assert (d / "ca.pem").read_bytes() == before
    assert vfl("certs", d, "--host", "coord.example.org", "--host", "10.0.0.5", "--force") == 0
    _, san = _san(d / "server.pem")
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    (tmp_path / "file").write_text("x")
    assert vfl("certs", tmp_path / "file") == 2
    assert "is a file" in capsys.readouterr().err


# -- superlink -------------------------------------------------------------------------------
def test_superlink_command_has_tls_one_port_and_no_runtime_installs(tmp_path, capsys):
    d = tmp_path / "certs"
    vfl("certs", d)
    capsys.readouterr()
    assert vfl("superlink", "--certs", d, "--port", 8123, "--dry-run") == 0
    cmd = capsys.readouterr().out.split()
    assert Path(cmd[0]).name == "flower-superlink"
    flags = dict(zip(cmd, cmd[1:]))
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8123"
    assert flags["--ssl-ca-certfile"] == str((d / "ca.pem").resolve())
    assert flags["--ssl-certfile"] == str((d / "server.pem").resolve())
    assert flags["--ssl-keyfile"] == str((d / "server.key").resolve())
    assert "--disable-runtime-dependency-installation" in cmd and "--insecure" not in cmd
    assert vfl("superlink", "--insecure", "--host", "127.0.0.1", "--dry-run") == 0
    assert "--insecure" in capsys.readouterr().out.split()


def test_superlink_refuses_missing_certificates_with_what_to_do(tmp_path, capsys):
    assert vfl("superlink", "--certs", tmp_path / "nope", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "vfl deploy certs" in err
    d = tmp_path / "certs"
    vfl("certs", d)
    (d / "server.key").unlink()
    capsys.readouterr()
    assert vfl("superlink", "--certs", d, "--dry-run") == 2
    assert "lacks server.key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # TLS or not: one of them, not both
        vfl("superlink", "--certs", d, "--insecure")
    assert exc.value.code == 2
    assert vfl("superlink", "--insecure", "--port", 0, "--dry-run") == 2


def test_flower_missing_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(local.shutil, "which", lambda *a, **k: None)
    assert vfl("superlink", "--insecure", "--dry-run") == 2
    assert "pip install 'vfl[flower]'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"`flwr` is not installed.*vfl\[flower\]"):
        local.flower_executable("flwr")


# -- split and job-config --------------------------------------------------------------------
@pytest.fixture(scope="module")
def actg():
    from vfl import load_dataset

    return load_dataset("actg320", seed=0)


def test_split_writes_each_partys_table_as_it_reads_back(actg, tmp_path, capsys):
    assert vfl("split", tmp_path / "data") == 0
    out = capsys.readouterr().out
    assert "censor" in out and "none" in out
    for name, table in actg.tables.items():
        path = tmp_path / "data" / f"{name}.csv"
        back = PartyTable.from_csv(path, "id", label_column=table.label_name)
        assert list(back.ids) == list(table.ids) and back.columns == table.columns
        assert back.features.dtype == table.features.dtype
        assert back.features.tobytes() == table.features.tobytes()
        assert back.label_name == table.label_name
        if table.has_labels:
            assert np.array_equal(back.labels, table.labels)
        else:
            assert back.labels is None
        assert f"--party {name}" in out


def test_split_refuses_an_unknown_data_set(tmp_path, capsys):
    assert vfl("split", "--dataset", "radiology", tmp_path) == 2
    err = capsys.readouterr().err
    assert "unknown data set" in err and "actg320" in err
    assert not any(tmp_path.iterdir())


class _Stop(Exception):
    pass


def _scenario_config(monkeypatch, tmp_path, *argv):
    """The TrainConfig `python -m scenarios.hospital_lab_pharmacy ARGV` trains with."""
    seen = {}

    def capture(tables, active, config, **kw):
        seen.update(parties=list(tables), active=active, config=config)
        raise _Stop

    monkeypatch.setattr(hospital_lab_pharmacy, "run_vertical_comparison", capture)
    with pytest.raises(_Stop):
        hospital_lab_pharmacy.main([*argv, "--out", str(tmp_path / "scenario"), "--no-progress"])
    return seen


@pytest.mark.parametrize("argv", [
    ["--protocol", "paillier"],
    ["--protocol", "plain"],
    ["--protocol", "paillier", "--quick", "--seed", "3"],
    ["--protocol", "plain", "--bottom", "mlp", "--epochs", "2"],
])
def test_job_config_is_the_scenarios_configuration(monkeypatch, tmp_path, capsys, argv):
    out = tmp_path / "job.json"
    assert vfl("job-config", *argv, out) == 0
    assert "SuperLink's machine" in capsys.readouterr().out
    job = json.loads(out.read_text())
    scenario = _scenario_config(monkeypatch, tmp_path, *argv)
    assert job == {"parties": scenario["parties"], "active": scenario["active"],
                   "train": scenario["config"].to_json(), "evaluate": ["test"]}
    assert job["parties"][0] == job["active"] == "hospital"


def test_job_config_refuses_other_data_and_no_epochs(tmp_path, capsys):
    assert vfl("job-config", "--dataset", "gbsg2", tmp_path / "j.json") == 2
    assert "trains on actg320" in capsys.readouterr().err
    assert vfl("job-config", "--dataset", "nope", tmp_path / "j.json") == 2
    assert "unknown data set" in capsys.readouterr().err
    assert vfl("job-config", "--epochs", 0, tmp_path / "j.json") == 2
    assert "1 epoch or more" in capsys.readouterr().err
    assert not (tmp_path / "j.json").exists()
    assert vfl("local", "--dataset", "gbsg2", "--workdir", tmp_path / "w") == 2
    assert "trains on actg320" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


# -- run: bad input stops before anything connects --------------------------------------------
@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"parties": ["hospital", "lab"], "train": {"task": "binary"}}))
    return path


@pytest.mark.parametrize("args, message", [
    (["--config", "{missing}"], "no such file; `vfl deploy job-config"),
    (["--config", "{notjson}"], "is not JSON"),
    (["--config", "{noparties}"], 'needs "parties"'),
    (["--config", "{notrain}"], 'needs "train"'),
    (["--config", "{job}", "--superlink", "coord.example.org"], "expected HOST:PORT"),
])
def test_run_refuses_bad_input(tmp_path, job_file, capsys, args, message):
    files = {"missing": tmp_path / "missing.json", "notjson": tmp_path / "bad.json",
             "noparties": tmp_path / "noparties.json", "notrain": tmp_path / "notrain.json",
             "job": job_file}
    files["notjson"].write_text("{parties")
    files["noparties"].write_text(json.dumps({"parties": []}))
    files["notrain"].write_text(json.dumps({"parties": ["hospital"]}))
    argv = [a.format(**files) for a in args]
    if "--superlink" not in argv:
        argv += ["--superlink", "127.0.0.1:1"]
    assert vfl("run", "--insecure", "--job", "vertical", *argv) == 2
    assert message in capsys.readouterr().err


def test_run_refuses_a_missing_ca_and_an_absent_superlink(job_file, tmp_path, capsys):
    assert vfl("run", "--superlink", "127.0.0.1:1", "--root-certificates", tmp_path / "ca.pem",
               "--job", "vertical", "--config", job_file) == 2
    assert "copy the SuperLink operator's ca.pem" in capsys.readouterr().err
    port = local.free_port()
    assert vfl("run", "--superlink", f"127.0.0.1:{port}", "--insecure", "--job", "vertical",
               "--config", job_file) == 1
    err = capsys.readouterr().err
    assert "no SuperLink answers" in err and "vfl deploy superlink" in err


def test_node_refuses_a_missing_data_file(tmp_path, capsys):
    assert vfl("node", "--party", "lab", "--data", tmp_path / "lab.csv", "--id-column", "id",
               "--insecure") == 2
    assert "does not exist" in capsys.readouterr().err


# -- the shared `flwr run` step, against a stand-in flwr -------------------------------------
FAKE_FLWR = """#!{python}
import json, os, sys, tomllib
args = sys.argv[1:]
assert args[0] == "run" and "--stream" in args, args
overrides = tomllib.load(open(args[args.index("--run-config") + 1], "rb"))
print("connection", args[2], open(os.path.join(os.environ["FLWR_HOME"], "config.toml")).read())
print("overrides", json.dumps(overrides), flush=True)
mode = os.environ.get("FAKE_FLWR", "ok")
if mode == "ok":
    parties = json.load(open(overrides["job-config"]))["parties"]
    result = {{"aligned": 3, "rounds": 2, "losses": [0.7, 0.625], "parties": parties,
              "metrics": {{"test": {{"auc": 0.75}}}},
              "deployment": {{"seconds": 1.5, "round_trips": 4, "transcript": [1, 2],
                             "network_bytes": {{"sent": 10, "received": 20}}}}}}
    with open(overrides["result"], "w") as f:
        json.dump(result, f)
if mode in ("ok", "elsewhere"):
    print("[vfl] done in 1.5 s; result written to", overrides["result"])
else:
    print("ServerApp: ValueError: boom")
    sys.exit(1)
"""


@pytest.fixture
def fake_flwr(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "flwr"
    exe.parent.mkdir()
    exe.write_text(FAKE_FLWR.format(python=sys.executable))
    exe.chmod(0o755)
    real = local.flower_executable
    monkeypatch.setattr(local, "flower_executable",
                        lambda name: exe if name == "flwr" else real(name))
    return exe


def test_flwr_run_writes_the_overrides_and_reads_a_fresh_result(tmp_path, fake_flwr,
                                                                monkeypatch):
    home = tmp_path / "home"
    write_connection(home, "coord", "coord.example.org:8000", tmp_path / "ca.pem")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"parties": ["a", "b"]}))
    result = tmp_path / "result.json"
    out = flwr_run(tmp_path / "app", "coord", home, "vertical", job, result,
                   stem=tmp_path / "run", reply_timeout=7, connect_timeout=9)
    assert out["parties"] == ["a", "b"] and out["log"] == str(tmp_path / "run.log")
    log = (tmp_path / "run.log").read_text()
    assert "connection coord [superlink.coord]" in log and "coord.example.org:8000" in log
    overrides = json.loads(log.split("overrides ", 1)[1].splitlines()[0])
    assert overrides == {"job": "vertical", "job-config": str(job), "result": str(result),
                         "reply-timeout": 7.0, "connect-timeout": 9.0}
    # A result left by an earlier run is not taken for this run's.
    monkeypatch.setenv("FAKE_FLWR", "fail")
    with pytest.raises(DeploymentError, match="exited with 1 and no result(.|\n)*boom"):
        flwr_run(tmp_path / "app", "coord", home, "vertical", job, result,
                 stem=tmp_path / "run")
    monkeypatch.setenv("FAKE_FLWR", "elsewhere")
    with pytest.raises(ResultOnSuperLinkError, match="on the SuperLink's machine"):
        flwr_run(tmp_path / "app", "coord", home, "vertical", job, tmp_path / "there.json",
                 stem=tmp_path / "run")


def test_local_federation_runs_through_the_same_step(tmp_path, fake_flwr):
    listener = socket.socket()  # a port that answers, for the pre-flight check
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fed = LocalFederation(tmp_path / "fed", tls=False, port=listener.getsockname()[1])
    write_connection(fed.home, "local", fed.address, None)
    out = fed.run("vertical", {"parties": ["hospital", "lab"]}, capture=True)
    assert out["parties"] == ["hospital", "lab"]
    assert out["capture"] == str(tmp_path / "fed" / "capture-1.bin")
    assert json.loads((tmp_path / "fed" / "job-1.json").read_text())["parties"] == [
        "hospital", "lab"]
    assert (tmp_path / "fed" / "run-1.toml").read_text().count("\n") == 6
    assert fed.run("vertical", {"parties": ["x"]})["parties"] == ["x"]  # run 2, its own files
    listener.close()


def test_vfl_deploy_run_prints_the_result_summary(tmp_path, job_file, fake_flwr, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the ServerApp gets absolute ones
    with socket.socket() as listener:  # a port that answers, for the pre-flight check
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert vfl("run", "--superlink", address, "--insecure", "--job", "vertical",
                   "--config", job_file.name, "--workdir", "w") == 0
    out = capsys.readouterr().out
    result = job_file.with_name("job.result.json")
    assert json.loads(result.read_text())["parties"] == ["hospital", "lab"]
    assert "metrics test auc" in out and "0.7500" in out and "round_trips" in out
    assert "overrides" in out  # flwr run's output reached the terminal
    assert "insecure = true" in (tmp_path / "w" / "flwr-home" / "config.toml").read_text()


def test_result_rows_flatten_numbers_and_leave_the_bulk_to_the_file():
    rows = dict(_result_rows({
        "aligned": 928, "rounds": 5, "losses": [0.69, 0.5], "log": "x.log",
        "metrics": {"test": {"auc": 0.73}},
        "deployment": {"round_trips": 26, "transcript": [{}], "node_timings": [[1.0]]},
        "saved": {"lab": {"file": "lab/state.msgpack"}},
    }))
    assert rows["aligned"] == 928 and rows["metrics test auc"] == 0.73
    assert rows["deployment round_trips"] == 26 and rows["losses"] == "2 values, last 0.5"
    assert rows["saved lab file"] == "lab/state.msgpack"
    assert not any("transcript" in k or "timings" in k or k == "log" for k in rows)
