"""Evaluation metrics on known inputs."""

import numpy as np
import pytest
import torch
from tiny import model_config

from airscene.evaluate import box_iou, confusion_matrix, matched_iou
from airscene.model import build_model


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], dtype=float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == pytest.approx(1.0)
    assert iou[0, 2] == 0.0
    assert iou[1, 1] == pytest.approx(16 / 100)


def test_matched_iou_is_permutation_invariant_and_counts_misses():
    truth = [
        np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
        np.zeros((0, 4)),
        np.array([[0, 0, 10, 10]]),
    ]
    inferred = [
        np.array([[20, 20, 30, 30], [0, 0, 10, 10]]),
        np.array([[1, 1, 5, 5]]),
        np.zeros((0, 4)),
    ]
    # two perfect matches, one extra inference (no penalty in this recall-style metric), one miss
    assert matched_iou(truth, inferred) == pytest.approx(2 / 3)


def test_confusion_matrix():
    true = np.array([0, 1, 1, 2, 2, 2])
    inferred = np.array([0, 1, 2, 2, 2, 3])
    matrix = confusion_matrix(true, inferred, 4)
    assert matrix.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 2, 1], [0, 0, 0, 0]]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(4 / 6)


def test_drawn_boxes_of_a_known_object_are_its_ink():
    torch.manual_seed(0)
    model = build_model(
        model_config(
            max_steps=1, lstm_size=8, encoder_hidden=8, decoder_hidden=8, predictor_hidden=8
        )
    )

    class Square(
        torch.nn.Module
    ):  # a decoder that draws a bright 10x10 square in its 28x28 glimpse
        def forward(self, z_what):
            glimpse = torch.zeros(z_what.shape[0], 28, 28)
            glimpse[:, 9:19, 9:19] = 1.0
            return glimpse

    model.objects.decoder = Square()
    # window 28 px wide (s = 0.56) centred on the canvas: glimpse pixels map 1:1 to canvas pixels
    objects = {"z_where": torch.tensor([[[0.56, 0.0, 0.0]]]), "z_what": torch.zeros(1, 1, 50)}
    boxes = model.objects.drawn_boxes(objects, threshold=0.5)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([20.0, 20.0, 30.0, 30.0]))


def test_average_precision_ranks_detections_by_their_presence():
    from airscene.evaluate import average_precision

    truth = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[5, 5, 15, 15]])]
    exact = [t.copy() for t in truth]
    scores = [np.array([0.9, 0.8]), np.array([0.7])]
    assert average_precision(truth, exact, scores) == pytest.approx(1.0)
    # A false detection ranked above every true one: precision 1/2, 2/3, 3/4 at recall 1/3..1,
    # made non-increasing (each point takes the best precision at its recall or beyond): 3/4.
    wrong = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 48, 48]]), truth[1]]
    ranked_first = [np.array([0.9, 0.8, 0.99]), np.array([0.7])]
    assert average_precision(truth, wrong, ranked_first) == pytest.approx(3 / 4)
    # Ranked last it costs nothing; a true object never found caps the recall.
    ranked_last = [np.array([0.9, 0.8, 0.1]), np.array([0.7])]
    assert average_precision(truth, wrong, ranked_last) == pytest.approx(1.0)
    assert average_precision(truth, [exact[0], exact[1][:0]], [scores[0], scores[1][:0]]) == (
        pytest.approx(2 / 3)
    )
