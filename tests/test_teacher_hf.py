"""The local Hugging Face backend on a tiny random GPT-2 and a word-level tokenizer built here.

Checks left-padded batching against one-prompt generation, length-sorted
batches, parse failures recorded (a random model writes no answers), and a
rerun that generates nothing.
"""
import pytest
from teacher_helpers import make_data_dir, read_jsonl

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from distill.data.readers import read_split  # noqa: E402
from distill.teacher import prompts  # noqa: E402
from distill.teacher.backends.base import SamplingParams  # noqa: E402
from distill.teacher.backends.hf_local import HFBackend  # noqa: E402
from distill.teacher.pipeline import run_teacher  # noqa: E402


def _tiny_model_dir(path, texts):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                     eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=1024, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    data = make_data_dir(root / "data")
    prompt_set = prompts.load_exemplars("svamp")
    examples, _ = read_split("svamp", str(data), "test")
    texts = [prompts.render_completion(prompt_set, e["input"]) for e in examples]
    return data, _tiny_model_dir(root / "model", texts), texts


class RecordingBackend(HFBackend):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def generate_batch(self, prompts_, params):
        self.batches.append([len(self._tokenizer(p)["input_ids"]) for p in prompts_])
        return super().generate_batch(prompts_, params)


def test_left_padded_batch_matches_one_prompt_at_a_time(tiny):
    _, model_dir, texts = tiny
    backend = HFBackend(model_dir, batch_size=4)
    # Prompts of different lengths in one batch: the short ones are left padded.
    batch = [texts[0], texts[3] + " extra words to pad", texts[7]]
    params = SamplingParams(max_tokens=6)
    together = backend.generate_batch(batch, params)
    alone = [backend.generate_batch([p], params)[0] for p in batch]
    assert [c.texts for c in together] == [c.texts for c in alone]
    assert all(c.completion_tokens == 6 and c.texts[0] for c in together)
    assert together[1].prompt_tokens > together[0].prompt_tokens


def test_pipeline_with_hf_backend_sorts_batches_records_parse_failures_and_resumes(tiny, tmp_path):
    data, model_dir, _ = tiny
    backend = RecordingBackend(model_dir, batch_size=3)
    params = SamplingParams(max_tokens=5, stop=prompts.COMPLETION_STOP)
    kwargs = dict(dataset="svamp", split="test", data_dir=str(data), out=str(tmp_path / "out"), params=params,
                  limit=8, progress_stream=open(tmp_path / "progress", "w"))
    summary = run_teacher(backend=backend, **kwargs)
    assert [len(b) for b in backend.batches] == [3, 3, 2]
    lengths = sum(backend.batches, [])
    assert lengths == sorted(lengths, reverse=True)  # longest first, so each batch pads little
    assert summary.completed == 8 and summary.failed == 0 and summary.parse_failures == 8
    records = read_jsonl(tmp_path / "out" / "svamp" / "test.teacher.jsonl")
    assert all(len(r["teacher_raw"]) == 1 and not r["parse_ok"] and r["error"] for r in records)
    backend.batches.clear()
    again = run_teacher(backend=backend, **kwargs)
    assert backend.batches == [] and again.from_cache == 8
    assert read_jsonl(tmp_path / "out" / "svamp" / "test.teacher.jsonl") == records
