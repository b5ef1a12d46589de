"""Streaming pieces without a model: incremental decoding (TextDeltas, RowStreamer) and the server's DeltaGate."""

import torch

from bricks.streaming import DeltaGate, RowStreamer, TextDeltas


class ByteTokenizer:
    """Token i is byte i; 256 is the end of sequence (special): multi-byte characters span several tokens."""

    eos_token_id = 256

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_a_character_of_several_tokens_is_held_back_until_whole():
    deltas = TextDeltas(ByteTokenizer())
    e_acute = list("é".encode())  # two bytes
    assert deltas.push([ord("a")]) == "a"
    assert deltas.push(e_acute[:1]) == ""
    assert deltas.push(e_acute[1:]) == "é"
    assert deltas.flush() == ""


def test_row_streamer_maps_rows_and_stops_at_each_rows_end():
    got: dict[int, str] = {}
    s = RowStreamer(ByteTokenizer(), rows=[7, 3], on_delta=lambda i, t: got.__setitem__(i, got.get(i, "") + t))
    s.put(torch.tensor([[1, 2, 3], [4, 5, 6]]))  # the prompts: skipped
    for step in ([ord("h"), ord("o")], [ord("i"), 256], [ord("!"), ord("x")]):  # row 3 ends at step 2; then padding
        s.put(torch.tensor(step))
    s.end()
    assert got == {7: "hi!", 3: "o"}


def test_gate_strips_white_space_and_holds_back_what_may_be_a_stop():
    gate = DeltaGate(stops=["END"])
    out = [gate.push(t) for t in ["  ", "he", "llo ", "E", "N", "x"]]
    assert out == ["", "he", "llo", "", "", " ENx"]  # "E", "EN" may begin END: held back
    assert gate.rest("hello ENx") == ""
    gate = DeltaGate(stops=["END"])
    out = [gate.push(t) for t in ["ab ", "E", "ND", " more"]]
    assert out == ["ab", "", "", ""] and gate.stopped
    assert gate.rest("ab ") == " "  # the final answer is the text cut before the stop


def test_gate_rest_is_the_final_text_after_what_was_sent():
    gate = DeltaGate()
    assert gate.push("abc  ") == "abc"
    assert gate.rest("abc") == ""
    assert DeltaGate().rest("xyz") == "xyz"


def test_a_batch_run_again_hands_on_only_what_is_new():
    got: list[tuple[int, str]] = []
    sent: dict[int, str] = {}
    first = RowStreamer(ByteTokenizer(), rows=[0, 1], on_delta=lambda i, t: got.append((i, t)), sent=sent)
    first.put(torch.tensor([[1], [2]]))
    first.put(torch.tensor([ord("a"), ord("x")]))  # then the batch runs out of memory and is split
    again = RowStreamer(ByteTokenizer(), rows=[0], on_delta=lambda i, t: got.append((i, t)), sent=sent)
    again.put(torch.tensor([[1]]))
    for token in (ord("a"), ord("b"), 256):
        again.put(torch.tensor([token]))
    again.end()
    assert got == [(0, "a"), (1, "x"), (0, "b")]
