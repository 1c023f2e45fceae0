//go:build !purego

package preprocess

import (
	"image"
	"math"
	"math/rand/v2"
	"testing"
)

// A colour fill through resampleRGB is the fill of the Go loops to the
// bit: downscales with one to many taps, upscales, crops, both layouts,
// with and without mean and std, from RGBA, YCbCr and 16-bit sources.
func TestResampleRGBMatchesGo(t *testing.T) {
	if !haveAVX {
		t.Skip("no AVX")
	}
	rng := rand.New(rand.NewPCG(7, 8))
	rgba := image.NewRGBA(image.Rect(0, 0, 301, 203))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(rng.IntN(256))
	}
	ycc := image.NewYCbCr(image.Rect(0, 0, 257, 190), image.YCbCrSubsampleRatio420)
	for _, p := range [][]byte{ycc.Y, ycc.Cb, ycc.Cr} {
		for i := range p {
			p[i] = uint8(rng.IntN(256))
		}
	}
	rgba64 := image.NewRGBA64(image.Rect(0, 0, 90, 70))
	for i := range rgba64.Pix {
		rgba64.Pix[i] = uint8(rng.IntN(256))
	}
	imgs := []image.Image{rgba, ycc, rgba64, rgba.SubImage(image.Rect(3, 5, 50, 44))}
	for i := range 300 {
		img := imgs[i%len(imgs)]
		s := Spec{Channels: 3, Height: 1 + rng.IntN(120), Width: 1 + rng.IntN(120)}
		if rng.IntN(2) == 0 {
			s.Resize = ResizeCrop
		}
		if rng.IntN(2) == 0 {
			s.Layout = LayoutNHWC
		}
		if rng.IntN(2) == 0 {
			s.Mean, s.Std = []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
		}
		s = s.WithDefaults()
		got := fill(t, s, img)
		haveAVX = false
		want := fill(t, s, img)
		haveAVX = true
		for j := range want {
			if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
				t.Fatalf("%T %v into %+v: [%d] = %v, the Go loops %v", img, img.Bounds(), s, j, got[j], want[j])
			}
		}
	}
}

// clampRound255's AVX loop clips and rounds as the Go loop does, halves
// and out-of-range values included, whatever the length.
func TestClampRound255MatchesGo(t *testing.T) {
	if !haveAVX {
		t.Skip("no AVX")
	}
	rng := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{1, 7, 8, 9, 63, 1000} {
		v := make([]float32, n)
		for i := range v {
			switch i % 4 {
			case 0:
				v[i] = float32(rng.IntN(300)-20) + 0.5 // ties
			default:
				v[i] = rng.Float32()*320 - 30
			}
		}
		want := append([]float32(nil), v...)
		clampRound255Generic(want)
		clampRound255(v)
		for i := range v {
			if v[i] != want[i] || v[i] != float32(math.Round(float64(v[i]))) {
				t.Fatalf("n %d, [%d]: %v, Go's loop %v", n, i, v[i], want[i])
			}
		}
	}
}
