"""The no-grad block (`SCAIL2TransformerBlock.forward_chunked`) equals the autograd forward, chunk for chunk."""

import pytest
import torch

from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel


def block_and_inputs(model_type: str, batch: int, per_sample_rope: bool):
    """One block of unequal sizes (dim 96, 3 heads, ffn 160), 300 tokens, 5 image + 7 text context tokens."""
    torch.manual_seed(0)
    model = SCAIL2Transformer3DModel(
        model_type=model_type, dim=96, ffn_dim=160, num_heads=3, num_layers=1, freq_dim=16, text_dim=8, image_dim=8
    )
    rope_shape = (batch, 300, 16, 2) if per_sample_rope else (300, 16, 2)
    inputs = (
        torch.randn(batch, 300, 96),
        torch.randn(batch, 6, 96),
        torch.randn(batch, 12, 96),
        torch.randn(*rope_shape),
        5 if model_type == "i2v" else 0,
    )
    block = model.blocks[0].eval()
    block.chunk_min_unit_bytes = 0  # chunk even this small sequence
    return block, inputs


@pytest.mark.parametrize("model_type, batch, per_sample_rope", [("i2v", 2, False), ("t2v", 1, True)])
@pytest.mark.parametrize("autocast", [False, True])
def test_chunks_equal_the_autograd_forward(model_type, batch, per_sample_rope, autocast):
    block, inputs = block_and_inputs(model_type, batch, per_sample_rope)
    assert len(range(0, 300, block.chunk_tokens(300))) > 1  # several chunks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        whole = block(*inputs)  # grad enabled: the unchunked forward
        with torch.no_grad():
            chunked = block(*inputs)
    assert whole.requires_grad and not chunked.requires_grad
    torch.testing.assert_close(chunked, whole.detach(), rtol=0, atol=1e-6 if not autocast else 1e-2)


def test_chunks_leave_the_input_as_it_was():
    block, inputs = block_and_inputs("i2v", 1, False)
    x = inputs[0].clone()
    with torch.no_grad():
        block(*inputs)
    assert torch.equal(inputs[0], x)


def test_one_chunk_or_many_give_the_same_output():
    block, inputs = block_and_inputs("i2v", 2, False)
    with torch.no_grad():
        many = block(*inputs)
        block.chunk_units = 1e9  # one chunk: the whole sequence
        assert block.chunk_tokens(300) >= 300
        one = block(*inputs)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
