"""Makes teacher/tests/data/interp_pos.safetensors: transformers' CLIP vision tower (the tiny
fixture checkpoint) on a 40x48 input with interpolate_pos_encoding=True, the reference for
ovkd's bicubic position interpolation. Run from the repository root with torch + transformers:
    python bench/teacher_make_interp_fixture.py
"""
import torch
from safetensors.torch import save_file
from transformers import CLIPModel

model = CLIPModel.from_pretrained("fixtures/clip/tiny").eval()
g = torch.Generator().manual_seed(5)
px = torch.randn(1, 3, 40, 48, generator=g)
with torch.no_grad():
    out = model.vision_model(pixel_values=px, interpolate_pos_encoding=True)
    emb = model.vision_model.embeddings
    pos = emb.interpolate_pos_encoding(torch.zeros(1, 31, 64), 40, 48)
save_file(
    {
        "pixel_values": px.contiguous(),
        "positions": pos[0].contiguous(),
        "last_hidden_state": out.last_hidden_state.contiguous(),
    },
    "teacher/tests/data/interp_pos.safetensors",
)
print("ok", pos.shape, out.last_hidden_state.shape)
