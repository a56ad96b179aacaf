"""Cross-tokenizer OPD: alignment on hand examples, shared-vocabulary maths, and a Llama student
scored by a Qwen3 teacher whose tokenizer differs from its own."""

import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from esr_lab.config import ModelPair
from esr_lab.crosstok import (
    CROSS_LOSSES,
    CrossBatch,
    SharedVocab,
    align_response,
    build_cross_batch,
    char_spans,
    cross_position_loss,
    pair_position_stats,
    shared_vocab,
)
from esr_lab.data import Problem
from esr_lab.divergences import reduce_loss, reverse_kl
from esr_lab.errors import UserError
from esr_lab.policy import load_policy
from esr_lab.scoring import build_batch, response_logits, vocabularies_agree
from tests.tiny_models import CORPUS, byte_level_tokenizer, llama_tokenizer

TEXT = "Then add: 12 + 21 = 33. \\boxed{33}"
BOXED = " \\boxed{33}"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def _tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(_ids(tokenizer, text))


# --- alignment --------------------------------------------------------------------------------


def test_identical_tokenizers_give_the_identity_alignment() -> None:
    tok = byte_level_tokenizer(CORPUS)
    ids = _ids(tok, TEXT)
    row = align_response(tok, tok, ids)
    assert row.text == TEXT
    assert row.teacher_ids == ids
    assert row.columns == list(range(len(ids)))


def test_spans_tile_the_text() -> None:
    tok = llama_tokenizer()
    text, spans = char_spans(tok, _ids(tok, TEXT))
    assert text == TEXT
    assert [text[a:b] for a, b in spans] == [t.replace("Ġ", " ") for t in _tokens(tok, TEXT)]


def test_a_token_the_teacher_splits_in_two_reads_the_half_holding_its_middle_char() -> None:
    student, teacher = byte_level_tokenizer(CORPUS), byte_level_tokenizer()  # teacher: raw bytes
    assert _tokens(student, "Then") == ["The", "n"]
    row = align_response(student, teacher, _ids(student, "Then"))
    # "The" spans chars 0-2, middle char 1 ("h") is teacher token 1; "n" is teacher token 3.
    assert row.student_spans == [(0, 3), (3, 4)]
    assert row.columns == [1, 3]


def test_the_middle_char_picks_the_teacher_token_of_a_longer_student_token() -> None:
    student, teacher = byte_level_tokenizer(CORPUS), llama_tokenizer()
    assert _tokens(student, BOXED) == ["Ġ\\", "boxed", "{", "33", "}"]
    assert _tokens(teacher, BOXED) == ["Ġ\\", "bo", "xed", "{", "3", "3", "}"]
    # "boxed" spans chars 2-6, middle 4 ("x") is in "xed"; "33" spans 8-9, middle 9 is the
    # second "3" (an even length takes the later of its two middle characters).
    assert align_response(student, teacher, _ids(student, BOXED)).columns == [0, 2, 3, 5, 6]


def test_student_tokens_inside_one_teacher_token_read_the_same_column() -> None:
    student, teacher = llama_tokenizer(), byte_level_tokenizer(CORPUS)
    assert align_response(student, teacher, _ids(student, BOXED)).columns == [0, 1, 1, 2, 3, 3, 4]


def test_a_split_character_is_read_where_its_first_byte_is() -> None:
    tok = byte_level_tokenizer(CORPUS)
    ids = _ids(tok, "a é∑")
    assert len(ids) == 1 + 1 + 2 + 3  # "a", "Ġ", then 2 + 3 byte tokens
    text, spans = char_spans(tok, ids)
    assert text == "a é∑"
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 3), (3, 4), (4, 4), (4, 4)]
    assert align_response(tok, tok, ids).columns == [0, 1, 2, -1, 4, -1, -1]
    # The released code: a continuation byte reads the teacher token covering its character.
    assert align_response(tok, tok, ids, neighbour=True).columns == [0, 1, 2, 2, 4, 4, 4]


def _gemma_like_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style, as Gemma's: spaces become "▁", unknown characters <0x..> bytes."""
    pieces = ["<unk>", *[f"<0x{b:02X}>" for b in range(256)], "▁", "a", "b", "▁b"]
    bpe = models.BPE(
        vocab={p: i for i, p in enumerate(pieces)},
        merges=[("▁", "b")],
        byte_fallback=True,
        unk_token="<unk>",
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_byte_fallback_tokens_on_either_side() -> None:
    gemma_like, byte_level = _gemma_like_tokenizer(), byte_level_tokenizer(CORPUS)
    ids = _ids(gemma_like, "a é b")
    assert gemma_like.convert_ids_to_tokens(ids) == ["a", "▁", "<0xC3>", "<0xA9>", "▁b"]
    assert char_spans(gemma_like, ids) == ("a é b", [(0, 1), (1, 2), (2, 3), (3, 3), (3, 5)])
    # As the teacher: "é" is read at its first byte token, " b" at "▁b" for both " " and "b".
    assert _tokens(byte_level, "a é b") == ["a", "Ġ", "Ã", "©", "Ġ", "b"]
    row = align_response(byte_level, gemma_like, _ids(byte_level, "a é b"))
    assert row.columns == [0, 1, 2, -1, 4, 4]


def _whitespace_teacher() -> PreTrainedTokenizerFast:
    """A teacher whose tokens leave the spaces out of every offset."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_a_character_no_teacher_token_covers_has_no_alignment() -> None:
    student = byte_level_tokenizer()
    assert _tokens(student, "a b") == ["a", "Ġ", "b"]
    assert align_response(student, _whitespace_teacher(), _ids(student, "a b")).columns == [
        0,
        -1,
        1,
    ]
    # The released code: the space reads the teacher token before it ("a").
    row = align_response(student, _whitespace_teacher(), _ids(student, "a b"), neighbour=True)
    assert row.columns == [0, 0, 1]


def _cross(columns: list[list[int]]) -> CrossBatch:
    """A CrossBatch with given columns, every position aligned (its teacher batch unused)."""
    columns_BT = torch.tensor(columns)
    teacher = build_batch([[0]], [[0]], pad_id=0)
    return CrossBatch(teacher, columns_BT, torch.ones_like(columns_BT, dtype=torch.bool))


# --- shared vocabulary ------------------------------------------------------------------------


def test_shared_vocab_matches_strings_across_different_ids() -> None:
    student, teacher = llama_tokenizer(), byte_level_tokenizer(CORPUS)
    assert not vocabularies_agree(student, teacher)
    vocab = shared_vocab(student, teacher)
    s_tokens = student.convert_ids_to_tokens(vocab.student_ids_S.tolist())
    t_tokens = teacher.convert_ids_to_tokens(vocab.teacher_ids_S.tolist())
    assert s_tokens == t_tokens
    assert (vocab.student_ids_S != vocab.teacher_ids_S).any()
    shared = set(student.get_vocab()) & set(teacher.get_vocab())
    assert len(s_tokens) == len(shared) == len(student) - 4  # all but the 4 Llama specials


def test_a_pair_with_too_little_shared_vocabulary_is_refused() -> None:
    student, teacher = llama_tokenizer(), byte_level_tokenizer(CORPUS)
    with pytest.raises(UserError) as err:
        shared_vocab(student, teacher, min_overlap=0.99)
    assert str(err.value) == (
        "student and teacher share 276 of 280 / 300 decoded token strings (98.6%); "
        "cross-tokenizer OPD needs at least 99%"
    )
    with pytest.raises(
        UserError, match=r"^min_overlap=1.5 is not accepted; use a number in \[0, 1\]$"
    ):
        shared_vocab(student, teacher, min_overlap=1.5)
    with pytest.raises(UserError, match="needs a fast"):
        shared_vocab(student, SimpleNamespace(is_fast=False))
    # Raw bytes against a word-level teacher: only single printable characters are shared.
    student, teacher = byte_level_tokenizer(), _whitespace_teacher()
    n = len(set(student.get_vocab()) & set(teacher.get_vocab()))
    assert n / 80 < 0.5
    with pytest.raises(
        UserError, match=f"share {n} of 259 / 80 decoded token strings .*at least 50%$"
    ):
        shared_vocab(student, teacher)


def test_shared_vocab_kl_against_hand_computation() -> None:
    # Student ids 0 and 2 are the strings of teacher ids 1 and 3; student id 1 is not shared.
    vocab = SharedVocab(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, -1, 1]))
    student_BTV = torch.tensor([[[0.5, 0.3, 0.2]]]).log()
    # Teacher column 0 is a decoy; the student's one position reads column 1.
    teacher_BUV = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.2, 0.3]]]).log()
    student_batch = build_batch([[5]], [[0]], pad_id=9)
    cross = _cross([[1]])
    # Renormalised over the shared strings: student [5/7, 2/7], teacher [4/7, 3/7].
    expected = 5 / 7 * math.log(5 / 4) + 2 / 7 * math.log(2 / 3)
    for name in ("reverse_kl", "jsd"):
        loss = cross_position_loss(
            name, student_BTV, teacher_BUV, cross, vocab, student_batch.response_ids_BT, beta=1.0
        )
        assert loss.item() == pytest.approx(expected, abs=1e-6)
    forward = 4 / 7 * math.log(4 / 5) + 3 / 7 * math.log(3 / 2)
    loss = cross_position_loss("forward_kl", student_BTV, teacher_BUV, cross, vocab)
    assert loss.item() == pytest.approx(forward, abs=1e-6)
    sampled = cross_position_loss(
        "sampled_token", student_BTV, teacher_BUV, cross, vocab, student_batch.response_ids_BT
    )
    assert sampled.item() == pytest.approx(math.log(5 / 7) * math.log(5 / 4), abs=1e-6)


def test_uld_reads_the_aligned_column_over_the_full_vocabularies() -> None:
    # Student [.1, .9]; the teacher's column 1 is [.2, .5, .3]: sorted L1 = 0.8 (column 0 gives 0).
    p_s = torch.tensor([[[0.1, 0.9]]]).log()
    p_t = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.5, 0.3]]]).clamp(min=1e-30).log()
    vocab = SharedVocab(torch.tensor([0]), torch.tensor([0]), torch.tensor([0, -1]))
    assert cross_position_loss("uld", p_s, p_t, _cross([[1]]), vocab).item() == pytest.approx(
        0.8, abs=1e-6
    )
    assert cross_position_loss("uld", p_s, p_t, _cross([[0]]), vocab).item() == pytest.approx(
        0.0, abs=1e-6
    )


# --- masks --------------------------------------------------------------------------------------


def test_masks_where_no_alignment_exists() -> None:
    student, teacher = llama_tokenizer(), byte_level_tokenizer(CORPUS)
    vocab = shared_vocab(student, teacher)
    special = student.convert_tokens_to_ids("<|eot_id|>")  # a Llama special the teacher lacks
    rows = [_ids(student, "a é") + [special] + _ids(student, " 12"), _ids(student, "a")]
    cross = build_cross_batch(student, teacher, [[1, 2], [3]], rows, vocab)
    assert student.convert_ids_to_tokens(rows[0]) == ["a", "Ġ", "Ã", "©", "<|eot_id|>", "Ġ12"]
    # The second byte of "é" has an empty span, the special is no teacher string; padding.
    assert cross.aligned_BT.tolist() == [
        [True, True, True, False, False, True],
        [True, False, False, False, False, False],
    ]
    assert cross.teacher.response_ids_BT[1, :1].tolist() == _ids(teacher, "a")


# --- tiny models end to end -----------------------------------------------------------------------


def _prompt_ids(tokenizer, problem: str) -> list[int]:
    messages = [{"role": "user", "content": problem}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return _ids(tokenizer, text)


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_identical_tokenizers_give_the_same_kl_as_the_same_tokenizer_path(bpe_model_dir) -> None:
    model, tok = _load(bpe_model_dir)
    responses = [_ids(tok, TEXT), _ids(tok, "The answer is 42.")]
    prompts = [_prompt_ids(tok, "What is 12 + 21?"), _prompt_ids(tok, "Say 42.")]
    batch = build_batch(prompts, responses, tok.pad_token_id)
    cross = build_cross_batch(tok, tok, prompts, responses, shared_vocab(tok, tok))
    assert torch.equal(cross.teacher.input_ids_BL, batch.input_ids_BL)
    assert torch.equal(cross.aligned_BT, batch.response_mask_BT)
    with torch.no_grad():
        logits = response_logits(model, batch)
        torch.manual_seed(0)
        other = logits + torch.randn_like(logits)  # a different "student" on the same tokens
    expected = reverse_kl(other, logits)
    got = cross_position_loss("reverse_kl", other, logits, cross, shared_vocab(tok, tok))
    mask = batch.response_mask_BT
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("loss", CROSS_LOSSES)
def test_llama_student_and_qwen3_teacher_give_finite_losses_and_gradients(
    loss, llama_model_dir, bpe_model_dir
) -> None:
    student, s_tok = _load(llama_model_dir)
    teacher, t_tok = _load(bpe_model_dir)
    assert type(student).__name__ == "LlamaForCausalLM"
    assert type(teacher).__name__ == "Qwen3ForCausalLM"
    vocab = shared_vocab(s_tok, t_tok)
    responses = [_ids(s_tok, TEXT + " é"), _ids(s_tok, "Please reason step by step.")]
    problems = ["What is 12 + 21?", "Reason."]
    s_batch = build_batch([_prompt_ids(s_tok, p) for p in problems], responses, s_tok.pad_token_id)
    cross = build_cross_batch(
        s_tok, t_tok, [_prompt_ids(t_tok, p) for p in problems], responses, vocab
    )
    assert cross.teacher.response_ids_BT.shape[1] != s_batch.response_ids_BT.shape[1]
    with torch.no_grad():
        t_logits = response_logits(teacher, cross.teacher)
    s_logits = response_logits(student.train(), s_batch)
    per_pos_BT = cross_position_loss(
        loss, s_logits, t_logits, cross, vocab, s_batch.response_ids_BT
    )
    mask_BT = s_batch.response_mask_BT & cross.aligned_BT
    assert mask_BT.sum() >= 0.8 * s_batch.response_mask_BT.sum()
    assert torch.isfinite(per_pos_BT[mask_BT]).all()
    reduce_loss(per_pos_BT, mask_BT).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_cross_loss_reads_the_aligned_teacher_column_over_shared_strings(
    llama_model_dir, bpe_model_dir
) -> None:
    student, s_tok = _load(llama_model_dir)
    teacher, t_tok = _load(bpe_model_dir)
    vocab = shared_vocab(s_tok, t_tok)
    responses = [_ids(s_tok, "Say 42."), _ids(s_tok, BOXED)]
    s_batch = build_batch([_prompt_ids(s_tok, "Q")] * 2, responses, s_tok.pad_token_id)
    cross = build_cross_batch(s_tok, t_tok, [_prompt_ids(t_tok, "Q")] * 2, responses, vocab)
    with torch.no_grad():
        s_logits = response_logits(student, s_batch)
        t_logits = response_logits(teacher, cross.teacher)
        loss_BT = cross_position_loss("reverse_kl", s_logits, t_logits, cross, vocab)
        # Row 1 on its own, as a trainer's micro-batch sees it.
        part = cross.rows(slice(1, 2))
        row_BT = cross_position_loss(
            "reverse_kl", s_logits[1:], response_logits(teacher, part.teacher), part, vocab
        )
    assert cross.columns_BT[1].tolist() == [0, 1, 1, 2, 3, 3, 4]
    for t, column in enumerate(cross.columns_BT[1].tolist()):
        by_hand = reverse_kl(
            s_logits[1, t, vocab.student_ids_S], t_logits[1, column, vocab.teacher_ids_S]
        )
        assert loss_BT[1, t].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert torch.allclose(row_BT[0], loss_BT[1], atol=1e-5)


def test_position_stats_for_a_cross_tokenizer_pair(llama_model_dir, bpe_model_dir) -> None:
    pair = ModelPair(str(llama_model_dir), str(bpe_model_dir), device="cpu", dtype="float32")
    student, teacher = (load_policy(name, pair) for name in (pair.student, pair.teacher))
    problems = [Problem(id="p0", problem="What is 12 + 21?", answer="33")]
    responses = [_ids(student.tokenizer, TEXT)]
    stats = pair_position_stats(student, teacher, problems, responses)
    assert stats["position"].tolist() == list(range(len(responses[0])))
    assert stats["token_id"].tolist() == responses[0]
    assert (stats["reverse_kl"] >= -1e-6).all() and stats["reverse_kl"].notna().all()
