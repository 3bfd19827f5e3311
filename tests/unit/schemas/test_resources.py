from __future__ import annotations

import pytest

from fedhub.schemas.resources import (
    InvalidOptions,
    OptionKind,
    OptionSpec,
    parse_duration,
    parse_memory,
    specs_from_json,
    validate_options,
)

SPECS = [
    OptionSpec(name="partition", kind=OptionKind.CHOICE, choices=("debug", "gpu"),
               default="debug"),
    OptionSpec(name="cores", label="Cores", kind=OptionKind.INTEGER, minimum=1, maximum=8,
               default=1),
    OptionSpec(name="memory", kind=OptionKind.MEMORY, minimum=256, maximum=16384),
    OptionSpec(name="walltime", kind=OptionKind.DURATION, maximum=24 * 60, default="1:00:00"),
]


def test_defaults_fill_in_and_values_normalize() -> None:
    assert validate_options(SPECS, {}) == {"partition": "debug", "cores": 1, "walltime": 60}
    got = validate_options(SPECS, {"partition": "gpu", "cores": "4", "memory": "2G",
                                   "walltime": "90m"})
    assert got == {"partition": "gpu", "cores": 4, "memory": 2048, "walltime": 90}


@pytest.mark.parametrize("raw", [
    {"partition": "gpu; rm -rf /"}, {"partition": "$(id)"}, {"cores": "1; id"},
    {"cores": 0}, {"cores": 9}, {"cores": True}, {"memory": "1T"}, {"memory": "lots"},
    {"walltime": "25:00:00"}, {"walltime": "1:99"}, {"shell": "bash"},
])
def test_hostile_or_out_of_range_values_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidOptions):
        validate_options(SPECS, raw)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(InvalidOptions) as err:
        validate_options(SPECS, {"cores": 99, "bogus": 1, "partition": "nope"})
    text = str(err.value)
    assert "unknown option 'bogus'" in text and "Cores: must be at most 8" in text
    assert "must be one of debug, gpu" in text


def test_a_misspelled_option_gets_the_likeliest_name_and_what_is_offered() -> None:
    with pytest.raises(InvalidOptions, match=r"unknown option 'core' \(options here: "
                                             r"partition, cores.*; did you mean 'cores'\?\)"):
        validate_options(SPECS, {"core": 2})
    with pytest.raises(InvalidOptions, match=r"'stie' \(this site takes no options; did you "
                                             r"mean 'site'\?\)"):
        validate_options([], {"stie": "local"})


@pytest.mark.parametrize(("raw", "mib"), [(512, 512), ("512M", 512), ("4G", 4096),
                                          ("4GiB", 4096), ("2048k", 2), ("1t", 1048576)])
def test_memory(raw: object, mib: int) -> None:
    assert parse_memory(raw) == mib


@pytest.mark.parametrize(("raw", "minutes"), [(30, 30), ("45", 45), ("90m", 90), ("4h", 240),
                                              ("2d", 2880), ("2:00:00", 120), ("1:30", 90),
                                              ("1-12:00", 2160)])
def test_duration(raw: object, minutes: int) -> None:
    assert parse_duration(raw) == minutes


def test_declarations_refuse_unsafe_choices_and_round_trip_as_json() -> None:
    with pytest.raises(ValueError):
        OptionSpec(name="image", kind=OptionKind.CHOICE, choices=("ok", "bad name"))
    data = [s.model_dump(mode="json") for s in SPECS]
    assert specs_from_json(data) == SPECS
    with pytest.raises(InvalidOptions):
        specs_from_json([{"name": "X!", "kind": "choice"}])
