"""Makes pil_resize.json: what PIL (Pillow 9.4, Debian 12's python3-pil) gives
for the resizes TestPILResize checks DCD's interpolation against.

The source is a gray image whose pixel (x, y) is (x*37 + y*91 + (x*y) % 13) % 256,
which the test makes too. Each case is PIL's resize of it (torchvision's Resize
of a PIL image), optionally after a Resize(shorter) + CenterCrop as
torchvision's do. Run: python3 pil_resize.py > pil_resize.json
"""
import json
from PIL import Image

def source(w, h):
    img = Image.new("L", (w, h))
    img.putdata([(x * 37 + y * 91 + (x * y) % 13) % 256 for y in range(h) for x in range(w)])
    return img

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
cases = []
for name, f in FILTERS.items():
    for (sw, sh), (w, h) in [((23, 17), (7, 5)), ((5, 4), (11, 9)), ((40, 30), (16, 12))]:
        out = source(sw, sh).resize((w, h), f)
        cases.append({"interpolation": name, "src": [sw, sh], "size": [w, h], "shorter": 0, "pixels": list(out.getdata())})
    # torchvision: Resize(shorter) then CenterCrop(size).
    sw, sh, shorter, cw, ch = 40, 30, 16, 12, 12
    rw, rh = (int(shorter * sw / sh), shorter) if sw > sh else (shorter, int(shorter * sh / sw))
    r = source(sw, sh).resize((rw, rh), f)
    left, top = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))
    out = r.crop((left, top, left + cw, top + ch))
    cases.append({"interpolation": name, "src": [sw, sh], "size": [cw, ch], "shorter": shorter, "pixels": list(out.getdata())})
print(json.dumps(cases))
