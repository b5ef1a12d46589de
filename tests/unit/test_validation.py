import pytest

from orchestrator.validation import InputError, check_text


def test_check_text_rejects_bad_input_with_the_value():
    with pytest.raises(InputError, match="instruction is empty: '   '"):
        check_text("   ", "instruction")
    with pytest.raises(InputError, match="1048576 characters long"):
        check_text("a" * (1 << 20), "instruction")
    with pytest.raises(InputError, match="not valid UTF-8 \\(bad byte 0xff at offset 3\\)"):
        check_text(b"abc\xff", "instruction")
    with pytest.raises(InputError, match="must be a string, got int"):
        check_text(3, "instruction")
    assert check_text(b"Reverse", "instruction") == "Reverse"
    assert check_text("", "input", allow_empty=True) == ""
