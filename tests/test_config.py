"""config: the shipped file equals the built-in defaults, layering of callscreen.d/, and every kind
of mistake reported as 'file:line: message' (config.load on temporary directories)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from callscreen import config as config_mod
from callscreen.config import Config, ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "callscreen.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(main: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.load(main)
    return info.value.problems


# -- the shipped file ----------------------------------------------------------------------------

def test_shipped_file_is_exactly_the_builtin_defaults() -> None:
    """Every Config field (present and future) read from config/callscreen.yaml equals Config()."""
    loaded = config_mod.load(SHIPPED)
    defaults = Config()
    for field in dataclasses.fields(Config):
        if field.name in ("rules_dir", "sources"):
            continue
        assert getattr(loaded, field.name) == getattr(defaults, field.name), field.name
    assert loaded.sources == (str(SHIPPED),)


def test_shipped_file_mentions_every_setting() -> None:
    """Each default-bearing section of Config is spelled out in the shipped file."""
    doc = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    top = {f.name for f in dataclasses.fields(Config)} - {"sources"}
    top = {"numbers" if n in ("strip_prefixes", "neighbour_digits") else n for n in top}
    assert top == set(doc)
    for section in ("redis", "thresholds", "reputation", "challenge", "holidays", "logging",
                    "features", "server"):
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        assert fields == set(doc[section]), section


def test_missing_sections_fall_back_to_defaults(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path / "callscreen.yaml", "region: FR\n"))
    assert cfg.thresholds == Config().thresholds
    assert cfg.redis == Config().redis
    assert cfg.lines == ()


# -- layering ------------------------------------------------------------------------------------

def test_layering_merges_mappings_replaces_lists_in_lexical_order(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", """
        region: FR
        language: en
        thresholds: {challenge: 20, voicemail: 70}
        lines: ["01 99 00 00 01", "02 61 91 00 01"]
        server: {allowed_clients: [127.0.0.1, "::1", 10.0.0.0/8]}
        """)
    d = tmp_path / "callscreen.d"
    write(d / "10-site.yaml", """
        thresholds: {voicemail: 80}
        lines: ["03 53 01 00 01"]
        language: fr
        """)
    write(d / "20-later.yaml", """
        thresholds: {block: 200}
        server: {allowed_clients: [192.0.2.1], workers: 2}
        """)
    # lexical, not numeric: "9-" sorts after "20-"
    write(d / "9-last.yaml", "language: en\n")
    write(d / "30-disabled.yaml.off", "language: de\n")  # not *.yaml: ignored
    write(d / "README", "not yaml at all: [\n")

    cfg = config_mod.load(main)

    assert (cfg.thresholds.challenge, cfg.thresholds.voicemail, cfg.thresholds.block) == (
        20.0, 80.0, 200.0)  # mapping merged key by key
    assert [ln.did for ln in cfg.lines] == ["+33353010001"]  # list replaced, not appended
    assert cfg.server.allowed_clients == ("192.0.2.1",)
    assert cfg.server.workers == 2
    assert cfg.language == "en"
    assert cfg.sources == (str(main), str(d / "10-site.yaml"), str(d / "20-later.yaml"),
                           str(d / "9-last.yaml"))


def test_overrides_without_main_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An absent default path still reads callscreen.d/; an explicit missing path is an error."""
    write(tmp_path / "callscreen.d" / "10-x.yaml", "region: GB\n")
    monkeypatch.setenv(config_mod.ENV_PATH, str(tmp_path / "callscreen.yaml"))
    assert config_mod.load().region == "GB"
    with pytest.raises(ConfigError, match="no such file"):
        config_mod.load(tmp_path / "nope.yaml")


def test_relative_rules_dir_is_relative_to_the_main_file(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path / "etc" / "callscreen.yaml", "rules_dir: rules\n"))
    assert cfg.rules_dir == (tmp_path / "etc" / "rules").resolve()


def test_line_defaults_and_numbers(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path / "callscreen.yaml", """
        timezone: Europe/Paris
        language: fr
        lines:
          - "01 99 00 00 01"
          - {number: "+1 202 555 0100", name: dc, timezone: America/New_York, language: en}
        """))
    fr, us = cfg.lines
    assert (fr.did, fr.name, fr.timezone, fr.language, fr.country) == (
        "+33199000001", "+33199000001", "Europe/Paris", "fr", "FR")
    assert (us.did, us.name, us.timezone, us.language, us.country) == (
        "+12025550100", "dc", "America/New_York", "en", "US")
    assert cfg.line_for("+12025550100") is us and cfg.line_for("+33100000000") is None


# -- mistakes, each with its file:line -----------------------------------------------------------

def test_bad_region_in_override_names_the_override_and_line(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", "region: FR\nlanguage: en\n")
    override = write(tmp_path / "callscreen.d" / "10-lines.yaml", """
        # our lines
        lines:
          - number: "+33199000001"
            name: home
        region: FRA
        """)
    problems = problems_of(main)
    assert len(problems) == 1
    assert problems[0].startswith(f"{override}:5: ")
    assert "FRA" in problems[0]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("region: FR\nlanguge: en\n", 2, ["unknown key", "languge"]),
        ("region: FR\nredis:\n  url: redis://127.0.0.1/0\n  prefx: 'x:'\n", 4,
         ["unknown key", "redis.prefx"]),
        ("lines:\n  - number: '0199000001'\n    nmae: home\n", 3, ["unknown key", "nmae"]),
        ("region: FR\nredis:\n  socket_timeout_ms: fast\n", 3, ["socket_timeout_ms", "int"]),
        ("thresholds:\n  challenge: high\n", 2, ["challenge", "float"]),
        ("challenge:\n  digits: yes\n", 2, ["digits", "int"]),
        ("region: 33\n", 1, ["region", "str"]),
        ("redis: redis://x\n", 1, ["redis", "mapping"]),
        ("timezone: Europe/Pariss\n", 1, ["time zone", "Europe/Pariss"]),
        ("lines:\n  - {number: '0199000001', timezone: Mars/Olympus}\n", 2,
         ["time zone", "Mars/Olympus"]),
        ("redis:\n  url: http://127.0.0.1:6379/0\n", 2, ["redis url", "http://"]),
        ("redis:\n  url: 127.0.0.1:6379\n", 2, ["redis url"]),
        ("region: FR\nthresholds:\n  challenge: 90\n  voicemail: 60\n", 3,
         ["challenge <= voicemail <= block"]),
        ("thresholds: {voicemail: 200}\n", 1, ["challenge <= voicemail <= block"]),
        ("lines:\n  - '01 99 00 00 01'\n  - '+33199000001'\n", 3, ["+33199000001", "twice"]),
        ("lines:\n  - '01 99 00 00 01'\n  - number: '0033199000001'\n", 3, ["twice"]),
        ("lines:\n  - '0199'\n", 2, ["'0199'", "not a phone number"]),
        ("lines:\n  - number: 'home phone'\n", 2, ["home phone", "not a phone number"]),
        ("lines:\n  - name: nameless\n", 2, ["without 'number'"]),
        ("lines: '0199000001'\n", 1, ["must be a list"]),
        ("fail_mode: sometimes\n", 1, ["fail_mode", "sometimes"]),
        ("default_action: drop\n", 1, ["default_action", "drop"]),
        ("numbers:\n  neighbour_digits: {FRA: 5}\n", 2, ["FRA", "ISO"]),
        ("numbers:\n  neighbour_digits: {FR: 0}\n", 2, ["neighbour_digits.FR"]),
        ("numbers:\n  strip_prefixes: ['9a']\n", 2, ["9a", "digits only"]),
        ("server:\n  allowed_clients: [localhost]\n", 2, ["allowed_clients"]),
        ("server:\n  port: 70000\n", 2, ["port"]),
        ("server:\n  workers: 0\n", 2, ["workers must be 1-64", "got 0"]),
        ("redis:\n  sentinels: ['10.0.0.1']\n  sentinel_service: cs\n", 2,
         ["sentinel '10.0.0.1' must be host:port"]),
        ("redis:\n  sentinel_service: cs\n", 2, ["sentinel_service and sentinels go together"]),
        ("redis:\n  sentinels: ['h:\u00b2']\n  sentinel_service: cs\n", 2, ["must be host:port"]),
        ("redis:\n  url: redis://h/x\n  sentinels: ['h:26379']\n  sentinel_service: cs\n", 2,
         ["'/x' is not a database number"]),
        ("reputation:\n  half_life_days: 0\n", 2, ["half_life_days", "> 0"]),
        ("challenge:\n  on_fail: hangup\n", 2, ["on_fail", "hangup"]),
        ("region: FR\nlogging:\n  level: LOUD\n", 3, ["logging level", "LOUD"]),
    ],
)
def test_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int,
                                     words: list[str]) -> None:
    main = write(tmp_path / "callscreen.yaml", text)
    problems = problems_of(main)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{main}:{line}: "), problems[0]
    for word in words:
        assert word in problems[0]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", "region: FRA\ntimezone: Nowhere\nfail_mode: x\n")
    problems = problems_of(main)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{main}:1", f"{main}:2", f"{main}:3"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("region: FR\nthresholds:\n  challenge: 30\n  voicemail: [60\nlanguage: en\n", 5,
         ["expected ',' or ']'"]),
        ("region: FR\nlanguage: en\n\tbad: 1\n", 3, ["tab character"]),  # libyaml's words
        ("region: FR\nredis: {url: 'redis://x'\n", 3, []),
        ("region: 'FR\n", 2, []),
    ],
)
def test_broken_yaml_syntax_names_the_line(tmp_path: Path, text: str, line: int,
                                           words: list[str]) -> None:
    main = write(tmp_path / "callscreen.yaml", text)
    problems = problems_of(main)
    assert problems[0].startswith(f"{main}:{line}: "), problems
    for word in words:
        assert word in problems[0]


def test_broken_override_names_the_override(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", "region: FR\n")
    bad = write(tmp_path / "callscreen.d" / "20-x.yaml", "language: en\nlines: ['0199000001'\n")
    problems = problems_of(main)
    assert problems[0].startswith(f"{bad}:3: "), problems


@pytest.mark.parametrize("text", ["- region: FR\n", "just a string\n", "42\n"])
def test_non_mapping_file(tmp_path: Path, text: str) -> None:
    main = write(tmp_path / "callscreen.yaml", text)
    assert problems_of(main) == [f"{main}:1: the file must be a mapping of settings"]


def test_empty_file_is_fine(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path / "callscreen.yaml", "# nothing yet\n"))
    assert cfg.region == Config().region


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("region: FR\nlanguage: en\nregion: GB\n", 3),
        ("redis:\n  url: redis://a/0\n  prefix: 'x:'\n  url: redis://b/0\n", 4),
    ],
)
def test_duplicate_key(tmp_path: Path, text: str, line: int) -> None:
    main = write(tmp_path / "callscreen.yaml", text)
    problems = problems_of(main)
    assert problems == [f"{main}:{line}: duplicate key '{text.splitlines()[line - 1].split(':')[0].strip()}'"]


def test_not_utf8(tmp_path: Path) -> None:
    main = tmp_path / "callscreen.yaml"
    main.write_bytes(b"language: \xe9\xe9\n")
    assert problems_of(main) == [f"{main}:1: not UTF-8 text"]


# -- safe YAML -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    [
        "region: !!python/object/apply:os.system ['true']\n",
        "region: !!python/object:callscreen.config.Config {}\n",
        "region: !!python/name:os.system\n",
        "x: !!python/tuple [1, 2]\n",
    ],
)
def test_python_tags_are_rejected(tmp_path: Path, text: str) -> None:
    """Same guarantees as yaml.safe_load: no Python object is ever built from a config file."""
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    main = write(tmp_path / "callscreen.yaml", text)
    problems = problems_of(main)
    assert problems[0].startswith(f"{main}:1: ")
    assert "constructor" in problems[0]


def test_load_text_reports_its_filename() -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load_text("fail_mode: shut\n", "snippet.yaml")
    assert info.value.problems[0].startswith("snippet.yaml:1: ")


def test_unquoted_technical_prefix_is_not_silently_changed(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", "numbers:\n  strip_prefixes: [00]\n")
    try:
        cfg = config_mod.load(main)
    except ConfigError as exc:  # rejecting it ("quote it") is fine too
        assert exc.problems[0].startswith(f"{main}:2: ")
        return
    assert cfg.strip_prefixes == ("00",)


def test_threshold_order_broken_by_override_names_the_override(tmp_path: Path) -> None:
    main = write(tmp_path / "callscreen.yaml", """
        thresholds:
          challenge: 30
          voicemail: 60
        """)
    override = write(tmp_path / "callscreen.d" / "20-site.yaml", """
        # site tuning
        thresholds:
          challenge: 90
        """)
    problems = problems_of(main)
    assert len(problems) == 1
    assert f"{override}:3" in problems[0], problems[0]
