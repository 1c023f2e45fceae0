package preprocess

import (
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"testing"
)

// The vector kernels give the Go loops' results to the bit, at every length
// and offset (the tails past the last whole vector included).
func TestRowKernelsMatchGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]float32, 80)
	for i := range src {
		src[i] = rng.Float32()*510 - 255
	}
	for off := range 3 {
		for n := 0; n+off <= 70; n++ {
			w := rng.Float32()
			base := make([]float32, n)
			for i := range base {
				base[i] = rng.Float32() * 100
			}
			got, want := make([]float32, n), make([]float32, n)
			copy(got, base)
			copy(want, base)
			addScaledRow(got, src[off:], w)
			addScaledRowGeneric(want, src[off:], w)
			equalBits(t, "addScaledRow", n, off, got, want)
			samples := make([]byte, n+off)
			for i := range samples {
				samples[i] = uint8(rng.IntN(256))
			}
			bytesToFloats(got, samples[off:])
			bytesToFloatsGeneric(want, samples[off:])
			equalBits(t, "bytesToFloats", n, off, got, want)
		}
	}
}

func equalBits(t *testing.T, name string, n, off int, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s, %d from %d: [%d] = %v, want %v", name, n, off, i, got[i], want[i])
		}
	}
}

// A YCbCr row's colours are color.YCbCrToRGB of each pixel's samples, for
// every subsampling, in a sub-image that starts on an odd column and in an
// image whose x goes below 0 (where COffset rounds x/d toward zero).
func TestYCbCrRowsMatchPixels(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, ratio := range []image.YCbCrSubsampleRatio{
		image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420,
		image.YCbCrSubsampleRatio440, image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410,
	} {
		for _, r := range []image.Rectangle{
			image.Rect(0, 0, 23, 9), image.Rect(-13, -4, 11, 9), image.Rect(0, 0, 77, 3), image.Rect(0, 0, 66, 2),
		} {
			m := image.NewYCbCr(r, ratio)
			for _, p := range [][]uint8{m.Y, m.Cb, m.Cr} {
				for i := range p {
					p[i] = uint8(rng.IntN(256))
				}
			}
			// Sub-images at odd and even columns, of widths around the
			// vector loop's eight pixels, and the whole image.
			subs := []*image.YCbCr{m}
			if r.Min.X >= 0 {
				for _, x := range [][2]int{{3, 20}, {4, 12}, {1, 10}, {5, 70}, {2, 66}} {
					if x[1] <= r.Max.X {
						subs = append(subs, m.SubImage(image.Rect(x[0], 0, x[1], r.Max.Y)).(*image.YCbCr))
					}
				}
			}
			for _, sub := range subs {
				b := sub.Bounds()
				buf := make([]float32, 3*b.Dx())
				for y := b.Min.Y; y < b.Max.Y; y++ {
					readRow(buf, sub, y, b.Min.X, b.Max.X, 3, nil, false)
					for x := b.Min.X; x < b.Max.X; x++ {
						c := sub.YCbCrAt(x, y)
						rr, gg, bb := color.YCbCrToRGB(c.Y, c.Cb, c.Cr)
						k := 3 * (x - b.Min.X)
						if got, want := buf[k:k+3], []float32{float32(rr), float32(gg), float32(bb)}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
							t.Fatalf("%v in %v: pixel (%d, %d) = %v, want %v", ratio, b, x, y, got, want)
						}
					}
				}
			}
		}
	}
}

// The general path's output is the separable resample of the source: each
// output the sum over its vertical and horizontal taps of the source
// pixels, here summed in float64 straight from At, for downscales (with up
// to many taps), upscales, crops, gray and colour sources, both layouts
// and a sub-image.
func TestFillGeneralIsTheResample(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	rgba := image.NewRGBA(image.Rect(0, 0, 300, 41))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(rng.IntN(256))
		if i%4 == 3 {
			rgba.Pix[i] = 255
		}
	}
	g := image.NewGray(image.Rect(0, 0, 45, 31))
	for i := range g.Pix {
		g.Pix[i] = uint8(rng.IntN(256))
	}
	for _, tc := range []struct {
		name string
		img  image.Image
		spec Spec
	}{
		{"down", rgba.SubImage(image.Rect(0, 0, 37, 23)), Spec{Channels: 3, Height: 10, Width: 13}},
		{"down crop, NHWC", rgba, Spec{Channels: 3, Height: 16, Width: 16, Resize: ResizeCrop, Layout: LayoutNHWC}},
		{"many taps", rgba, Spec{Channels: 3, Height: 3, Width: 7}},
		{"slightly down", rgba.SubImage(image.Rect(0, 0, 40, 40)), Spec{Channels: 3, Height: 35, Width: 33}},
		{"gray slightly down", g.SubImage(image.Rect(0, 0, 40, 30)), Spec{Channels: 1, Height: 26, Width: 35}},
		{"up", rgba.SubImage(image.Rect(5, 4, 10, 8)), Spec{Channels: 3, Height: 11, Width: 17, Mean: []float32{0.4, 0.5, 0.6}, Std: []float32{0.2, 0.3, 0.4}}},
		{"to luma", rgba.SubImage(image.Rect(1, 1, 40, 30)), Spec{Channels: 1, Height: 12, Width: 9}},
		{"gray up and down", g, Spec{Channels: 3, Height: 50, Width: 20, Scale: ScaleByte}},
		{"gray crop", g.SubImage(image.Rect(2, 3, 44, 30)), Spec{Channels: 1, Height: 7, Width: 7, Resize: ResizeCrop}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.spec.WithDefaults()
			got := fill(t, s, tc.img)
			assertClose(t, got, resampled(s, tc.img), 2e-5)
		})
	}
}

// resampled is fillGeneral's result computed the plain way, in float64.
func resampled(s Spec, img image.Image) []float32 {
	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	x0, y0, rw, rh := 0.0, 0.0, float64(sw), float64(sh)
	if s.Resize == ResizeCrop {
		if int64(s.Width)*int64(sh) >= int64(s.Height)*int64(sw) {
			rh = float64(sw) * float64(s.Height) / float64(s.Width)
			y0 = (float64(sh) - rh) / 2
		} else {
			rw = float64(sh) * float64(s.Width) / float64(s.Height)
			x0 = (float64(sw) - rw) / 2
		}
	}
	var xt, yt taps
	xt.build(sw, x0, rw, s.Width)
	yt.build(sh, y0, rh, s.Height)
	a, off := s.affine(65535)
	out := make([]float32, s.Size())
	for y := range s.Height {
		for x := range s.Width {
			var sum [3]float64
			for j, wy := range yt.w[yt.off[y]:yt.off[y+1]] {
				for i, wx := range xt.w[xt.off[x]:xt.off[x+1]] {
					r, g, bb, _ := img.At(b.Min.X+xt.first[x]+i, b.Min.Y+yt.first[y]+j).RGBA()
					w := float64(wy) * float64(wx)
					sum[0] += w * float64(r)
					sum[1] += w * float64(g)
					sum[2] += w * float64(bb)
				}
			}
			for c := range s.Channels {
				v := sum[c]
				if s.Channels == 1 {
					v = float64(lumaR)*sum[0] + float64(lumaG)*sum[1] + float64(lumaB)*sum[2]
				}
				i := c*s.Width*s.Height + y*s.Width + x
				if s.Layout == LayoutNHWC {
					i = (y*s.Width+x)*s.Channels + c
				}
				out[i] = float32(v*float64(a[c]) + float64(off[c]))
			}
		}
	}
	return out
}
