"""Resumable training: a training killed mid-epoch and resumed from its snapshot ends with exactly the weights of one
that never stopped (dropout, shuffled data, Q8BERT's EMA ranges, PQ noise's masks), finished calls replay, and a
snapshot of another training is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import Killed, killed_after, tiny_config
from torch.utils.data import DataLoader
from transformers import BertForSequenceClassification

from qlib.bert.config import q8bert_config
from qlib.bert.convert import convert_bert
from qlib.bert.pq_noise import add_pq_noise
from qlib.experiments.snapshots import Snapshots
from qlib.experiments.train import finetune


def examples(n: int = 24) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 64, (12,), generator=generator), "attention_mask": torch.ones(12).long(),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def loader() -> DataLoader:
    return DataLoader(examples(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))


def model(kind: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    net = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    if kind == "q8bert":
        convert_bert(net, q8bert_config())  # EMA ranges: buffers that training moves
    elif kind == "pq-noise":
        add_pq_noise(net.bert, 0.5, centroids=8, refit_every=3)  # masks from each layer's own generator
    return net


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("kind", ["fp32", "q8bert", "pq-noise"])
def test_a_killed_training_resumes_to_the_weights_of_one_that_never_stopped(tmp_path, kind):
    straight = model(kind)
    figures = finetune(straight, loader(), epochs=2, lr=1e-3, progress=False)
    assert "resumed_at_steps" not in figures

    torch.manual_seed(123)  # the killed process's RNG; resuming restores the snapshot's
    with pytest.raises(Killed):  # killed in the second epoch (6 steps each), after step 8
        finetune(model(kind), loader(), 2, 1e-3, progress=False, loss_fn=killed_after(8),
                 snapshots=Snapshots(tmp_path, every_s=0))
    torch.manual_seed(456)
    resumed = model(kind)
    again = finetune(resumed, loader(), 2, 1e-3, progress=False, snapshots=Snapshots(tmp_path, every_s=0))
    assert again["resumed_at_steps"] == [8] and len(again["commits"]) == 2
    assert again["examples"] == figures["examples"] == 48
    assert_same_weights(resumed, straight)


def test_a_killed_training_on_length_grouped_batches_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    """The protocol's batches (``qlib.experiments.data.loader`` grouped by length) are drawn from the generator a
    snapshot keeps, so a resumed epoch sees the same batches as one that never stopped."""
    import datasets
    from transformers import AutoTokenizer

    from qlib.experiments.data import loader as qlib_loader

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = torch.randint(2, 20, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    encoded = datasets.Dataset.from_dict({"input_ids": [[5 + i] * n for i, n in enumerate(lengths)],
                                          "labels": [i % 2 for i in range(24)]})

    def grouped() -> DataLoader:
        return qlib_loader(encoded, tokenizer, 4, shuffle=True, seed=0, group_by_length=True)

    straight = model("q8bert")
    finetune(straight, grouped(), epochs=2, lr=1e-3, progress=False)
    with pytest.raises(Killed):
        finetune(model("q8bert"), grouped(), 2, 1e-3, progress=False, loss_fn=killed_after(8),
                 snapshots=Snapshots(tmp_path, every_s=0))
    resumed = model("q8bert")
    again = finetune(resumed, grouped(), 2, 1e-3, progress=False, snapshots=Snapshots(tmp_path, every_s=0))
    assert again["resumed_at_steps"] == [8]
    assert_same_weights(resumed, straight)


def test_finished_calls_replay_without_training_and_the_cut_one_goes_on(tmp_path):
    straight = model("fp32")
    for epochs in (1, 2):
        finetune(straight, loader(), epochs, 1e-3, progress=False)

    net = model("fp32")
    snapshots = Snapshots(tmp_path, every_s=1e9)  # only the end of each call: the cut call starts over
    finetune(net, loader(), 1, 1e-3, progress=False, snapshots=snapshots)
    with pytest.raises(Killed):
        finetune(net, loader(), 2, 1e-3, progress=False, loss_fn=killed_after(3), snapshots=snapshots)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune-0.safetensors"]

    resumed, snapshots = model("fp32"), Snapshots(tmp_path, every_s=1e9)
    replayed = finetune(resumed, loader(), 1, 1e-3, progress=False, loss_fn=killed_after(0), snapshots=snapshots)
    assert replayed["examples"] == 24  # the finished call's figures, no step taken (the loss would raise)
    assert replayed["resumed_at_steps"] == [replayed["steps"]] and len(replayed["commits"]) == 1  # who trained it
    finetune(resumed, loader(), 2, 1e-3, progress=False, snapshots=snapshots)
    assert_same_weights(resumed, straight)
    snapshots.clear()
    assert not tmp_path.exists()


def test_a_snapshot_of_another_training_is_refused(tmp_path):
    finetune(model("fp32"), loader(), 1, 1e-3, progress=False, snapshots=Snapshots(tmp_path))
    with pytest.raises(ValueError, match=r"another training .*'epochs': 1.*'epochs': 2"):
        finetune(model("fp32"), loader(), 2, 1e-3, progress=False, snapshots=Snapshots(tmp_path))
    with pytest.raises(ValueError, match="every_s must be"):
        Snapshots(tmp_path, every_s=-1)
