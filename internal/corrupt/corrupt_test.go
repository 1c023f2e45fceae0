package corrupt

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"math/rand/v2"
	"strings"
	"testing"
)

// digit draws a "7"-like stroke: a top bar and a diagonal, deliberately asymmetric so
// rotations are detectable. The origin is offset to catch code that assumes Min == (0,0).
func digit(w, h int) *image.Gray {
	img := image.NewGray(image.Rect(5, -3, 5+w, -3+h))
	b := img.Bounds()
	dot := func(x, y int) {
		for dy := range 2 {
			for dx := range 2 {
				img.SetGray(b.Min.X+x+dx, b.Min.Y+y+dy, color.Gray{230})
			}
		}
	}
	for x := w / 4; x < 3*w/4; x++ {
		dot(x, h/5)
	}
	for t := 0; t < 3*h/5; t++ {
		dot(3*w/4-t*w/(2*h), h/5+t)
	}
	return img
}

func seeded() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

func mustApply(t *testing.T, name string, src *image.Gray, rng *rand.Rand) *image.Gray {
	t.Helper()
	out, err := Apply(name, src, rng)
	if err != nil {
		t.Fatalf("Apply(%q): %v", name, err)
	}
	return out
}

func TestEachCorruption(t *testing.T) {
	sizes := []image.Point{{28, 28}, {17, 40}}
	for _, name := range Names() {
		for _, sz := range sizes {
			t.Run(fmt.Sprintf("%s/%dx%d", name, sz.X, sz.Y), func(t *testing.T) {
				src := digit(sz.X, sz.Y)
				orig := bytes.Clone(src.Pix)
				a := mustApply(t, name, src, seeded())
				b := mustApply(t, name, src, seeded())
				if !bytes.Equal(src.Pix, orig) {
					t.Fatal("source was modified")
				}
				if !bytes.Equal(a.Pix, b.Pix) {
					t.Error("not deterministic for the same seed")
				}
				want := src.Bounds()
				if name == "rot90" {
					want = image.Rect(want.Min.X, want.Min.Y, want.Min.X+want.Dy(), want.Min.Y+want.Dx())
				}
				if a.Bounds() != want {
					t.Errorf("bounds %v, want %v", a.Bounds(), want)
				}
				if a.Bounds() == src.Bounds() && bytes.Equal(a.Pix, src.Pix) {
					t.Error("image unchanged")
				}
			})
		}
	}
}

func TestRandomCorruptionsDependOnSeed(t *testing.T) {
	for name, c := range corruptions {
		if !c.needsRNG {
			continue
		}
		a := mustApply(t, name, digit(28, 28), seeded())
		b := mustApply(t, name, digit(28, 28), rand.New(rand.NewPCG(3, 4)))
		if bytes.Equal(a.Pix, b.Pix) {
			t.Errorf("%s: different seeds gave identical output", name)
		}
		if _, err := Apply(name, digit(28, 28), nil); err == nil {
			t.Errorf("%s: nil rng accepted", name)
		}
	}
}

func TestInvolutions(t *testing.T) {
	cases := []struct {
		name  string
		times int
	}{{"invert", 2}, {"rot90", 4}}
	for _, c := range cases {
		src := digit(19, 28)
		img := src
		for range c.times {
			img = mustApply(t, c.name, img, nil)
		}
		if img.Bounds() != src.Bounds() || !bytes.Equal(img.Pix, src.Pix) {
			t.Errorf("%s applied %d times is not the identity", c.name, c.times)
		}
	}
}

func TestRot90Clockwise(t *testing.T) {
	src := image.NewGray(image.Rect(0, 0, 3, 2))
	src.SetGray(0, 0, color.Gray{255}) // top-left goes to top-right
	out := mustApply(t, "rot90", src, nil)
	if out.GrayAt(1, 0).Y != 255 {
		t.Errorf("rot90 is not clockwise: %v", out.Pix)
	}
}

func TestBlurPreservesInteriorMass(t *testing.T) {
	// The blob sits far enough from the edges that clamping cannot leak mass back in;
	// the kernel radius is 8, so pixels 9+ away must stay black.
	src := image.NewGray(image.Rect(-20, 7, 30, 57))
	for y := 27; y < 37; y++ {
		for x := 0; x < 10; x++ {
			src.SetGray(x, y, color.Gray{200})
		}
	}
	sum := func(img *image.Gray) (s int) {
		for _, p := range img.Pix {
			s += int(p)
		}
		return s
	}
	out := mustApply(t, "blur", src, nil)
	before, after := sum(src), sum(out)
	if d := float64(after-before) / float64(before); d < -0.02 || d > 0.02 {
		t.Errorf("mass %d -> %d (%.1f%%)", before, after, 100*d)
	}
	if out.GrayAt(5, 32).Y >= 200 || out.GrayAt(-12, 32).Y != 0 || out.GrayAt(14, 32).Y == 0 {
		t.Error("blur did not spread the blob as expected")
	}
}

func TestUnknownName(t *testing.T) {
	_, err := Apply("x", digit(28, 28), seeded())
	if err == nil {
		t.Fatal("unknown name accepted")
	}
	want := `corrupt: unknown corruption "x" (known: ` + strings.Join(Names(), ", ") + ")"
	if err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}
