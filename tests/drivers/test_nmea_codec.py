"""The NMEA codec as tables of real sentences, plus property tests and fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model import GOOD, UNCERTAIN
from edge_agent_drivers.nmea.codec import (
    RANGES,
    ChecksumError,
    EpochAssembler,
    NmeaError,
    NoiseError,
    TruncatedError,
    checksum,
    decode,
    format_latitude,
    format_longitude,
    format_sentence,
    parse_latitude,
    parse_longitude,
    parse_sentence,
)


def values(line: bytes) -> dict[str, object]:
    decoded = decode(parse_sentence(line))
    assert decoded is not None
    return {r.metric: r.value for r in decoded.readings}


@pytest.mark.parametrize(("line", "expected"), [
    (b"$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000*6D",
     {"latitude": -19.4840833, "longitude": 24.1751, "altitude": 100.0, "fix_quality": 1,
      "satellites": 4, "hdop": 2.6}),
    (b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
     {"latitude": 48.1173, "longitude": 11.5166667, "speed": 22.4, "course": 84.4,
      "gnss_time": 764426119000}),
    (b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48", {"course": 54.7, "speed": 5.5}),
    (b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39",
     {"fix_type": 3, "pdop": 2.5, "hdop": 1.3, "vdop": 2.1}),
    (b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1D", {"latitude": 49.2741667,
                                                    "longitude": -123.1853333}),
    (b"$GPZDA,201530.00,04,07,2002,00,00*60", {"gnss_time": 1025813730000}),
])
def test_reference_sentences_decode_to_signed_degrees_and_nmea_units(line, expected):
    got = values(line)
    assert got.keys() == expected.keys()
    for metric, value in expected.items():
        assert got[metric] == pytest.approx(value, abs=1e-6), metric


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "GQ"])
def test_every_talker_id_is_accepted(talker):
    line = format_sentence(talker, "GLL", ["5130.000", "N", "00007.500", "W", "120000", "A", "A"])
    sentence = parse_sentence(line.strip())
    assert sentence.talker == talker and sentence.type == "GLL"
    assert values(line) == {"latitude": 51.5, "longitude": -0.125}


def test_vtg_speed_falls_back_to_kmh_converted_to_knots_and_legacy_layout_is_read():
    assert values(format_sentence("GN", "VTG", ["10.0", "T", "", "M", "", "N", "18.52", "K",
                                                "A"]))["speed"] == pytest.approx(10.0)
    assert values(format_sentence("GP", "VTG", ["054.7", "034.4", "005.5", "010.2"])) == {
        "course": 54.7, "speed": 5.5}


def test_no_fix_marks_position_uncertain_and_empty_fields_publish_nothing():
    void = decode(parse_sentence(format_sentence(
        "GP", "RMC", ["120000", "V", "4807.038", "N", "01131.000", "E", "", "", "230394"])))
    assert {r.metric: r.quality for r in void.readings} == {
        "latitude": UNCERTAIN, "longitude": UNCERTAIN, "gnss_time": GOOD}
    empty = decode(parse_sentence(format_sentence(
        "GP", "GGA", ["120000", "", "", "", "", "0", "00", "", "", "M", "", "M", "", ""])))
    assert {r.metric: r.value for r in empty.readings} == {"fix_quality": 0, "satellites": 0}


@pytest.mark.parametrize(("line", "error"), [
    (b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1E", ChecksumError),
    (b"$GPGLL,4916.46,N,12311.12,W,225444,A,*1D", ChecksumError),
    (b"$GPGLL,4916.45,N,12311.12,W,22", TruncatedError),
    (b"$GPGLL,4916.45,N,12311.12,W,225444,A,*1", TruncatedError),
    (b"\x00\xff garbage \x80", NoiseError),
    (b"$GPGLL,4916.45,Q,12311.12,W,225444,A,*01", NmeaError),  # checked below: bad hemisphere
    (b"$GPGGA,1200*", TruncatedError),
])
def test_faulty_lines_raise_the_kind_the_counters_use(line, error):
    if error is NmeaError:  # give it a valid checksum so the field check is what fails
        body = line[1:line.index(b"*")]
        line = b"$%s*%02X" % (body, checksum(body))
    with pytest.raises(error):
        decode(parse_sentence(line))


def test_a_cut_sentence_running_into_the_next_keeps_the_next_and_flags_noise():
    good = format_sentence("GN", "GLL", ["5130.000", "N", "00007.500", "W", "120000", "A", "A"])
    sentence = parse_sentence(b"$GNGGA,1200,51" + good.strip())
    assert sentence.type == "GLL" and sentence.noise


def test_epoch_gathers_a_burst_into_one_sample_and_splits_on_new_time_or_repeat():
    epoch = EpochAssembler()
    burst = [("RMC", ["120000.00", "A", "5130.000", "N", "00007.500", "W", "10.0", "90.0",
                      "260326"]),
             ("VTG", ["90.0", "T", "", "M", "10.0", "N", "18.52", "K", "A"]),
             ("GGA", ["120000.00", "5130.000", "N", "00007.500", "W", "1", "09", "0.9", "35.0",
                      "M", "47.0", "M", "", ""])]
    outs = [epoch.add(kind, decode(parse_sentence(format_sentence("GN", kind, f))), 1000)
            for kind, f in burst]
    assert outs == [None, None, None]
    next_rmc = ["120001.00", *burst[0][1][1:]]
    sample = epoch.add("RMC", decode(parse_sentence(format_sentence("GN", "RMC", next_rmc))),
                       2000)
    assert sample.ts_ms == 1000
    assert {r.metric for r in sample.readings} == {
        "latitude", "longitude", "speed", "course", "gnss_time", "altitude", "fix_quality",
        "satellites", "hdop"}
    # a timeless VTG repeated without a new time also closes the epoch
    vtg = decode(parse_sentence(format_sentence("GN", *burst[1])))
    assert epoch.add("VTG", vtg, 2100) is None
    assert epoch.add("VTG", vtg, 2200).ts_ms == 2000
    assert epoch.flush().ts_ms == 2200 and epoch.flush() is None


@given(st.floats(-89.999999, 89.999999), st.floats(-179.999999, 179.999999))
def test_positions_survive_formatting_to_within_the_fifth_decimal_of_a_minute(lat, lon):
    lat_text, ns = format_latitude(lat)
    lon_text, ew = format_longitude(lon)
    line = format_sentence("GN", "GLL", [lat_text, ns, lon_text, ew, "120000", "A", "A"])
    got = values(line)
    assert got["latitude"] == pytest.approx(lat, abs=1e-5 / 60 + 1e-12)
    assert got["longitude"] == pytest.approx(lon, abs=1e-5 / 60 + 1e-12)
    assert parse_latitude(lat_text, ns) == got["latitude"]
    assert parse_longitude(lon_text, ew) == got["longitude"]


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_either_decode_or_raise_nmea_error_never_anything_else(data):
    try:
        sentence = parse_sentence(data)
        decode(sentence)
    except NmeaError:
        pass


@settings(max_examples=300)
@given(st.sampled_from(["GGA", "RMC", "VTG", "GSA", "GLL", "ZDA"]),
       st.lists(st.text(alphabet="0123456789.,-NSEWAVTMK", max_size=12), max_size=20))
def test_well_framed_sentences_with_garbage_fields_raise_only_nmea_error(kind, fields):
    line = format_sentence("GP", kind, fields)
    with contextlib.suppress(NmeaError):
        decode(parse_sentence(line))


@settings(max_examples=200)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_single_byte_change_is_caught_by_the_checksum_or_the_framing(position, byte):
    line = format_sentence("GN", "GGA", ["120000.00", "5130.000", "N", "00007.500", "W", "1",
                                         "09", "0.9", "35.0", "M", "47.0", "M", "", ""]).strip()
    position %= len(line)
    if line[position] == byte:
        return
    corrupted = line[:position] + bytes([byte]) + line[position + 1:]
    try:
        result = decode(parse_sentence(corrupted))
    except NmeaError:
        return
    # only a change that keeps the sentence equivalent may pass (e.g. checksum hex case)
    assert result == decode(parse_sentence(line))


# -- hostile values in well-framed sentences (issue #18, item 5) ----------------------------
GGA = ["120000.00", "5130.000", "N", "00007.500", "W", "1", "09", "0.9", "35.0", "M", "47.0",
       "M", "", ""]


def _gga_with(index: int, text: str) -> list[str]:
    fields = list(GGA)
    fields[index] = text
    return fields


@pytest.mark.parametrize(("kind", "fields", "metric"), [
    ("GGA", _gga_with(8, "1e300"), "altitude"),
    ("GGA", _gga_with(8, "inf"), "altitude"),
    ("GGA", _gga_with(8, "nan"), "altitude"),
    ("GGA", _gga_with(8, "250000"), "altitude"),
    ("GGA", _gga_with(5, "99"), "fix_quality"),
    ("GGA", _gga_with(7, "-1"), "hdop"),
    ("GGA", _gga_with(6, "-5"), "satellites"),
    ("GGA", _gga_with(6, "99999"), "satellites"),
    ("GGA", _gga_with(6, "1_000"), "satellites"),
    ("GGA", _gga_with(6, " 7"), "satellites"),
    ("RMC", ["120000", "A", "5130.000", "N", "00007.500", "W", "1e307", "90.0", "260326"],
     "speed"),
    ("RMC", ["120000", "A", "5130.000", "N", "00007.500", "W", "10.0", "720", "260326"],
     "course"),
    ("RMC", ["120000", "A", "5130.000", "N", "00007.500", "W", "10.0", "90.0", "310226"],
     "gnss_time"),  # 31 February
    ("VTG", ["90.0", "T", "", "M", "", "N", "1_8.5", "K", "A"], "speed"),
    ("GSA", ["A", "7", *[""] * 12, "Infinity", "1.0", "1.0"], "fix_type"),
    ("ZDA", ["120000.00", "04", "07", "0_2002", "00", "00"], "gnss_time"),
])
def test_a_malformed_or_impossible_value_is_bad_and_counted_the_rest_stays(kind, fields, metric):
    decoded = decode(parse_sentence(format_sentence("GP", kind, fields)))
    assert metric in decoded.rejected
    got = {r.metric: r for r in decoded.readings}
    assert got[metric].value is None and got[metric].quality == "bad"
    for reading in decoded.readings:
        if reading.metric not in decoded.rejected:
            low, high = RANGES[reading.metric]
            assert reading.value is not None and low <= reading.value <= high


def test_an_unknown_fix_quality_leaves_the_position_uncertain_not_good():
    decoded = decode(parse_sentence(format_sentence("GP", "GGA", _gga_with(5, "99"))))
    assert {r.metric: r.quality for r in decoded.readings}["latitude"] == UNCERTAIN


@pytest.mark.parametrize("angle", ["51_30.000", "5130.0e1", "inf", "nan", " 5130.000",
                                   "-5130.000", "5190.000", "9130.000"])
def test_a_malformed_angle_drops_the_sentence(angle):
    with pytest.raises(NmeaError):
        decode(parse_sentence(format_sentence("GP", "GGA", _gga_with(1, angle))))


def test_a_rejected_value_does_not_erase_a_valid_one_of_the_same_epoch():
    epoch = EpochAssembler()
    gsa = ["A", "3", *[""] * 12, "1.5", "0.8", "1.2"]
    epoch.add("GSA", decode(parse_sentence(format_sentence("GP", "GSA", gsa))), 1)
    epoch.add("GGA", decode(parse_sentence(format_sentence("GP", "GGA", _gga_with(7, "-1")))), 1)
    assert {r.metric: r.value for r in epoch.flush().readings}["hdop"] == 0.8


_FIELD_TEXT = st.one_of(
    st.text(alphabet="0123456789.-", max_size=10),
    st.sampled_from(["1_000", "inf", "-inf", "nan", "1e300", "5.1e307", "Infinity", " 1", "+1",
                     "0x10", "99999", "-5", "720", "1e-5"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**12, 10**12).map(str))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["GGA", "RMC", "VTG", "GSA", "GLL", "ZDA"]),
       st.lists(st.one_of(_FIELD_TEXT, st.sampled_from(["N", "S", "E", "W", "A", "V", "T"])),
                min_size=4, max_size=20))
def test_nothing_outside_its_valid_range_is_ever_published_as_good(kind, fields):
    try:
        decoded = decode(parse_sentence(format_sentence("GP", kind, fields)))
    except NmeaError:
        return
    for reading in decoded.readings:
        if reading.value is None:
            assert reading.quality == "bad" and reading.metric in decoded.rejected
            continue
        low, high = RANGES[reading.metric]
        assert isinstance(reading.value, int | float) and low <= reading.value <= high, reading
