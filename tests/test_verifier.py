"""The verifier without HTTP: known answers, properties, rotation, bad input, no leaks."""

from __future__ import annotations

import array
import ast
import itertools
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_callbacks.errors import (
    ConfigurationError,
    MalformedSignatureError,
    MissingSignatureError,
    RunflowCallbackError,
    SignatureMismatchError,
    VerificationError,
)
from runflow_callbacks.verifier import (
    IncrementalVerifier,
    Secret,
    Verifier,
    _keyed_mac,
    is_valid,
    normalize_secrets,
    parse_signature,
    sign,
    verify,
)

VECTORS = Path(__file__).parent / "vectors"
KNOWN = json.loads((VECTORS / "spec_known_answer.json").read_text())
RFC4231 = json.loads((VECTORS / "rfc4231_hmac_sha256.json").read_text())["cases"]
SECRET: str = KNOWN["secret"]
BODY: bytes = KNOWN["body"].encode()
SIGNATURE: str = KNOWN["signature"]
ROTATION = ("whsec_first_1111111111111111", SECRET, "whsec_third_3333333333333333")

secret_values = (
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s).map(lambda s: "whsec_" + s)
)


# --- known answers -----------------------------------------------------------------------


def test_spec_known_answer_vector() -> None:
    assert len(BODY) == 242
    assert sign(BODY, SECRET) == SIGNATURE
    assert verify(BODY, SIGNATURE, SECRET).reveal() == SECRET
    assert is_valid(BODY, SIGNATURE, SECRET)


@pytest.mark.parametrize("case", RFC4231, ids=lambda case: f"case {case['case']}")
def test_rfc4231_hmac_sha256_primitive(case: dict[str, Any]) -> None:
    key, data = bytes.fromhex(case["key_hex"]), bytes.fromhex(case["data_hex"])
    keyed = _keyed_mac(key)
    one_shot = keyed.copy()
    one_shot.update(data)
    chunked = keyed.copy()
    for start in range(0, len(data), 7):
        chunked.update(data[start : start + 7])
    for mac in (one_shot, chunked):
        assert mac.finalize().hex().startswith(case["mac_hex"])


@pytest.mark.parametrize("case", [c for c in RFC4231 if c["case"] in {2, 4}], ids=["2", "4"])
def test_rfc4231_through_the_public_api(case: dict[str, Any]) -> None:
    # Cases whose keys are text (no leading/trailing whitespace) can be used as secrets.
    key = bytes.fromhex(case["key_hex"]).decode("ascii")
    data = bytes.fromhex(case["data_hex"])
    assert sign(data, key) == case["mac_hex"]
    incremental = IncrementalVerifier(key)
    incremental.update(data[:5])
    incremental.update(data[5:])
    assert incremental.verify(case["mac_hex"]).reveal() == key


# --- properties --------------------------------------------------------------------------


@settings(max_examples=60)
@given(body=st.binary(max_size=512), secret=secret_values)
def test_sign_then_verify_passes(body: bytes, secret: str) -> None:
    signature = sign(body, secret)
    assert len(signature) == 64
    assert signature == signature.lower()
    assert verify(body, signature, secret).reveal() == secret
    assert verify(bytearray(body), signature.upper().encode(), [secret]).reveal() == secret


@settings(max_examples=60)
@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_flipped_body_byte_is_a_mismatch(body: bytes, data: st.DataObject) -> None:
    signature = sign(body, SECRET)
    index = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(body)
    tampered[index] ^= 1 << bit
    with pytest.raises(SignatureMismatchError):
        verify(bytes(tampered), signature, SECRET)


@settings(max_examples=60)
@given(body=st.binary(max_size=128), data=st.data())
def test_any_changed_signature_digit_is_a_mismatch(body: bytes, data: st.DataObject) -> None:
    signature = sign(body, SECRET)
    index = data.draw(st.integers(0, 63))
    digit = data.draw(st.sampled_from("0123456789abcdef").filter(lambda d: d != signature[index]))
    changed = signature[:index] + digit + signature[index + 1 :]
    with pytest.raises(SignatureMismatchError):
        verify(body, changed, ROTATION)


header_values = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.binary(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF \t\r\n=-sha,v1", max_size=80),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=3), max_size=3),
)


@settings(max_examples=200)
@given(signature=header_values, body=st.binary(max_size=64))
def test_arbitrary_header_values_raise_only_our_errors(signature: Any, body: bytes) -> None:
    # Anything else (ValueError, TypeError, binascii.Error, UnicodeDecodeError) fails the test.
    with pytest.raises(VerificationError) as raised:
        verify(body, signature, ROTATION)
    assert SECRET not in str(raised.value)
    assert sign(body, SECRET) not in str(raised.value)


# --- rotation ----------------------------------------------------------------------------


def test_rotation_reports_the_second_of_three_secrets() -> None:
    matched = verify(BODY, SIGNATURE, ROTATION)
    assert (matched.position, matched.name, matched.reveal()) == (1, "#1", SECRET)


def test_rotation_with_labelled_secrets() -> None:
    secrets = [Secret(value, label=f"key-{i}") for i, value in enumerate(ROTATION)]
    verifier = Verifier(secrets)
    assert verifier.verify(BODY, SIGNATURE).name == "key-1"
    incremental = verifier.incremental()
    incremental.update(BODY)
    assert incremental.verify(SIGNATURE).name == "key-1"


def test_id_names_a_secret_without_label() -> None:
    secret = Secret(SECRET, id="0190f2a4-0000-7000-8000-0000000000aa")
    assert verify(BODY, SIGNATURE, ["whsec_other", secret]).name == secret.id


def test_mismatch_says_how_many_secrets_were_tried() -> None:
    with pytest.raises(SignatureMismatchError) as raised:
        verify(BODY, SIGNATURE, ROTATION[::2])
    assert raised.value.secrets_tried == 2
    assert "2 secrets tried" in str(raised.value)
    with pytest.raises(SignatureMismatchError, match="1 secret tried"):
        verify(BODY, SIGNATURE, "whsec_other")


# --- the signature header ----------------------------------------------------------------

GOOD_VARIANTS = {
    "uppercase": SIGNATURE.upper(),
    "mixed case": SIGNATURE[:32].upper() + SIGNATURE[32:],
    "spaces around": f"  {SIGNATURE} ",
    "tab and newline": f"\t{SIGNATURE}\r\n",
    "bytes": SIGNATURE.encode(),
    "bytes with whitespace": f" {SIGNATURE}\n".encode(),
    "bytearray": bytearray(SIGNATURE.encode()),
}


@pytest.mark.parametrize("signature", GOOD_VARIANTS.values(), ids=GOOD_VARIANTS.keys())
def test_accepted_signature_spellings(signature: Any) -> None:
    assert verify(BODY, signature, SECRET).reveal() == SECRET


BAD_SIGNATURES: dict[str, tuple[Any, type[VerificationError], str | None]] = {
    "None": (None, MissingSignatureError, None),
    "empty": ("", MissingSignatureError, None),
    "blank": ("  \t ", MissingSignatureError, None),
    "empty bytes": (b"", MissingSignatureError, None),
    "blank bytes": (b" \r\n", MissingSignatureError, None),
    "one digit short": (SIGNATURE[:-1], MalformedSignatureError, "length"),
    "one digit long": (SIGNATURE + "0", MalformedSignatureError, "length"),
    "sha1 length": (SIGNATURE[:40], MalformedSignatureError, "length"),
    "base64 digest": (
        "51WLOvvf9T3JyaPSGt7ZwmG0ACgRWDFTnGv1ZPROJ7Y=",
        MalformedSignatureError,
        None,
    ),
    "sha256= prefix": (f"sha256={SIGNATURE}", MalformedSignatureError, "prefix"),
    "SHA256= prefix": (f"SHA256={SIGNATURE}", MalformedSignatureError, "prefix"),
    "v1= prefix": (f"v1={SIGNATURE}", MalformedSignatureError, "prefix"),
    "0x prefix": ("0x" + SIGNATURE[:62], MalformedSignatureError, "non_hex"),
    "non-hex letter": (SIGNATURE[:-1] + "g", MalformedSignatureError, "non_hex"),
    "inner space": (SIGNATURE[:31] + " " + SIGNATURE[32:], MalformedSignatureError, "non_hex"),
    "two signatures": (f"{SIGNATURE},{SIGNATURE}", MalformedSignatureError, "multiple"),
    "folded headers": (f"{SIGNATURE}, {SIGNATURE[::-1]}", MalformedSignatureError, "multiple"),
    "short with comma": ("abc,def", MalformedSignatureError, "length"),
    "NUL byte": (SIGNATURE[:-1] + "\x00", MalformedSignatureError, "non_hex"),
    "non-ASCII letters": ("é" * 64, MalformedSignatureError, "non_ascii"),
    "full-width digits": ("\uff10" * 64, MalformedSignatureError, "non_ascii"),
    "no-break space": ("\u00a0" + SIGNATURE, MalformedSignatureError, "non_ascii"),
    "lone surrogate": (SIGNATURE[:-1] + "\udcff", MalformedSignatureError, "non_ascii"),
    "latin-1 bytes": (SIGNATURE[:-1].encode() + b"\xe9", MalformedSignatureError, "non_ascii"),
    "not a string": (12345, MalformedSignatureError, None),
}


@pytest.mark.parametrize(
    ("signature", "error", "reason"), BAD_SIGNATURES.values(), ids=BAD_SIGNATURES.keys()
)
def test_bad_signature_catalogue(
    signature: Any, error: type[VerificationError], reason: str | None
) -> None:
    with pytest.raises(error) as raised:
        verify(BODY, signature, SECRET)
    if reason is not None:
        assert isinstance(raised.value, MalformedSignatureError)
        assert raised.value.reason == reason
    assert not is_valid(BODY, signature, SECRET)
    with pytest.raises(error):
        parse_signature(signature)
    incremental = IncrementalVerifier(SECRET)
    incremental.update(BODY)
    with pytest.raises(error):
        incremental.verify(signature)


def test_malformed_length_is_reported_without_content() -> None:
    with pytest.raises(MalformedSignatureError) as raised:
        verify(BODY, " " + SIGNATURE[:40] + " ", SECRET)
    assert raised.value.length == 40
    assert SIGNATURE[:40] not in str(raised.value)


# --- bodies and secrets that are programming errors --------------------------------------


def test_str_body_asks_for_raw_bytes() -> None:
    with pytest.raises(TypeError, match="raw request body as bytes"):
        verify(BODY.decode(), SIGNATURE, SECRET)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="raw request body as bytes"):
        sign(BODY.decode(), SECRET)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="raw request body as bytes"):
        IncrementalVerifier(SECRET).update(BODY.decode())  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [None, 1, [b"{}"]], ids=["None", "int", "list"])
def test_non_bytes_body_is_a_type_error(body: Any) -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        verify(body, SIGNATURE, SECRET)


def test_odd_memoryviews_are_type_errors() -> None:
    with pytest.raises(TypeError, match="contiguous bytes"):
        verify(memoryview(BODY)[::2], SIGNATURE, SECRET)
    with pytest.raises(TypeError, match="contiguous bytes"):
        sign(memoryview(array.array("I", [1, 2])), SECRET)
    assert sign(memoryview(array.array("I", [1, 2])).cast("B"), SECRET)


def test_body_buffer_types_sign_alike() -> None:
    assert sign(bytearray(BODY), SECRET) == sign(memoryview(BODY), SECRET) == SIGNATURE
    assert verify(memoryview(BODY), SIGNATURE, SECRET).reveal() == SECRET


BAD_SECRETS: dict[str, Any] = {
    "empty": "",
    "empty in a list": ["whsec_ok", ""],
    "no secrets": [],
    "bytes": SECRET.encode(),
    "bytes in a list": [SECRET.encode()],
    "None": None,
    "int": 42,
    "trailing newline": SECRET + "\n",
    "leading space": " " + SECRET,
}


@pytest.mark.parametrize("secrets", BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_bad_secrets_are_configuration_errors(secrets: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        verify(BODY, SIGNATURE, secrets)
    assert isinstance(raised.value, ValueError)
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigurationError):
        Verifier(secrets)


# --- the Secret object -------------------------------------------------------------------


@settings(max_examples=60)
@given(value=secret_values)
def test_secret_repr_never_shows_the_value(value: str) -> None:
    secret = Secret(value)
    rest = value.removeprefix("whsec_")
    text = repr(secret)
    assert text == str(secret) == f"{secret}"
    masked = ast.literal_eval(text.removeprefix("Secret(").removesuffix(")"))
    assert isinstance(masked, str)
    assert masked.endswith("…")
    shown = masked.removesuffix("…").removeprefix("whsec_")
    # At most four characters and a quarter of the secret part are shown.
    assert len(shown) <= min(4, len(rest) // 4)
    assert rest.startswith(shown)
    assert text in repr([secret]) == f"[{text}]"
    assert repr(Verifier(secret)) == f"Verifier([{text}])"


def test_secret_repr_shape() -> None:
    secret = Secret("whsec_0123456789abcdef0123", id="abc", label="current")
    assert repr(secret) == "Secret('whsec_0123…', id='abc', label='current')"
    assert repr(Secret("short")) == "Secret('s…')"


def test_secret_is_not_picklable() -> None:
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(Secret(SECRET))


def test_secret_equality_and_hash() -> None:
    assert Secret(SECRET) == Secret(SECRET)
    assert Secret(SECRET) != Secret(SECRET + "x")
    assert Secret(SECRET, id="a") != Secret(SECRET, id="b")
    assert Secret(SECRET).__eq__("whsec") is NotImplemented
    assert len({Secret(SECRET), Secret(SECRET)}) == 1


def test_normalize_secrets_positions_and_cache() -> None:
    secrets = normalize_secrets(ROTATION)
    assert [s.position for s in secrets] == [0, 1, 2]
    # Strings are keyed once and reused: the same Secret comes back for the same value.
    assert normalize_secrets(SECRET)[0] is normalize_secrets(SECRET)[0]
    assert normalize_secrets(list(ROTATION)) is normalize_secrets(ROTATION)
    with pytest.raises(ConfigurationError):
        normalize_secrets([SECRET, ""])
    shared = Secret(SECRET, label="shared")
    first, second = normalize_secrets([shared, shared])
    assert (first.position, second.position, shared.position) == (0, 1, 0)


# --- incremental verification ------------------------------------------------------------


@settings(max_examples=40)
@given(body=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 2048), max_size=8))
def test_incremental_matches_one_shot(body: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    incremental = IncrementalVerifier(ROTATION)
    for start, end in itertools.pairwise(bounds):
        incremental.update(memoryview(body)[start:end])
    assert incremental.bytes_received == len(body)
    assert incremental.verify(sign(body, SECRET)).position == 1
    with pytest.raises(SignatureMismatchError):
        incremental.verify(sign(body + b"x", SECRET))


def test_incremental_refuses_updates_after_verify() -> None:
    incremental = IncrementalVerifier(SECRET)
    incremental.update(BODY)
    assert incremental.is_valid(SIGNATURE)
    assert not incremental.is_valid(None)
    with pytest.raises(RuntimeError, match="after verify"):
        incremental.update(b"more")


def test_incremental_holds_no_copy_of_the_body() -> None:
    incremental = IncrementalVerifier(ROTATION)
    chunk = bytearray(b"x" * 1024)
    incremental.update(chunk)
    chunk[:] = b"y" * 1024  # mutating the caller's buffer must not matter
    assert incremental.verify(sign(b"x" * 1024, SECRET)).position == 1
    assert not hasattr(incremental, "__dict__")


# --- Verifier ----------------------------------------------------------------------------


def test_verifier_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f" whsec_old_secret_0000 ,,{SECRET} ")
    verifier = Verifier.from_env()
    assert verifier.verify(BODY, SIGNATURE).position == 1
    assert verifier.is_valid(BODY, SIGNATURE)
    assert not verifier.is_valid(BODY, SIGNATURE[::-1])
    assert SECRET not in repr(verifier)
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", " , ")
    with pytest.raises(ConfigurationError, match="holds no secret"):
        Verifier.from_env()


def test_every_verification_error_is_a_runflow_error() -> None:
    for error in (MissingSignatureError, MalformedSignatureError, SignatureMismatchError):
        assert issubclass(error, VerificationError)
        assert issubclass(error, RunflowCallbackError)
