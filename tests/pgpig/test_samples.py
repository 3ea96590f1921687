"""``pgpig.samples``: the labelled header of the training sample grids."""

from __future__ import annotations

import torch

from pgpig.samples import PAIR_LABELS, label_columns, pair_grid, sample_grid


def _pairs(h: int, w: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 3, h, w, generator=g) * 2 - 1
    pose = torch.rand(4, 18, h, w, generator=g)
    return [image, pose, pose, -image, image.flip(3)]


def test_header_names_every_column_above_the_unchanged_grid():
    for h, w in ((64, 32), (128, 64), (256, 176)):
        source, source_pose, target_pose, generated, target = _pairs(h, w)
        labelled = pair_grid(source, source_pose, target_pose, generated, target)
        plain = sample_grid([source, source_pose.amax(1, keepdim=True).expand(-1, 3, -1, -1) * 2 - 1,
                             target_pose.amax(1, keepdim=True).expand(-1, 3, -1, -1) * 2 - 1, generated, target])
        header = labelled.shape[1] - plain.shape[1]
        assert 10 <= header <= 40, (h, w, header)  # two lines of at least 8 px fit; the images stay the main part
        assert torch.equal(labelled[:, header:], plain)
        strip = labelled[:, :header].numpy()
        assert (strip[:, :2] == 255).all()  # a white strip, text below its top margin
        for k in range(5):
            column = strip[:, :, k * w:(k + 1) * w]
            assert (column < 128).sum() >= 20, (h, w, PAIR_LABELS[k])  # dark text in every column's header
        # no two columns' headers are drawn alike
        drawn = [strip[:, :, k * w:(k + 1) * w].tobytes() for k in range(5)]
        assert len(set(drawn)) == 5


def test_header_matches_the_labels_drawn_alone_and_extra_columns_are_named():
    source, source_pose, target_pose, generated, target = _pairs(64, 32)
    with_extra = pair_grid(source, source_pose, target_pose, generated, target, extra=[generated])
    assert with_extra.shape[2] == 6 * 32
    labels = [*PAIR_LABELS[:-1], "extra", PAIR_LABELS[-1]]
    blank = torch.zeros(3, 8, 6 * 32, dtype=torch.uint8)
    alone = label_columns(blank, labels)[:, :-8]
    assert torch.equal(with_extra[:, :alone.shape[1]], alone)
    # a different label in one column changes that column's header only
    other = label_columns(blank, [*labels[:3], "warped", *labels[4:]])[:, :-8]
    changed = (other != alone).any(dim=(0, 1)).nonzero().flatten()
    assert changed.numel() and 3 * 32 <= changed.min() and changed.max() < 4 * 32
