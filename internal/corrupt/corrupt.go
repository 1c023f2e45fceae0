// Package corrupt applies deterministic MNIST-C-style corruptions to grayscale images.
//
// The corruptions model the distribution shifts that DCD's demo uses to make a
// classifier fail. Each works on pixel values scaled to [0,1], clips, and rounds
// back to bytes. Randomised corruptions draw only from the caller's rng, so a
// fixed seed reproduces the same bytes on every run and platform.
package corrupt

import (
	"errors"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
)

// plane is an image's pixels as floats in [0,1], indexed v[y*w+x] from the bounds' origin.
type plane struct {
	w, h int
	v    []float64
}

func newPlane(w, h int) plane { return plane{w, h, make([]float64, w*h)} }

func (p plane) at(x, y int) float64 { return p.v[y*p.w+x] }

func (p plane) mapPix(f func(float64) float64) plane {
	out := newPlane(p.w, p.h)
	for i, x := range p.v {
		out.v[i] = f(x)
	}
	return out
}

type corruption struct {
	needsRNG bool
	fn       func(p plane, rng *rand.Rand) plane
}

var corruptions = map[string]corruption{
	"blur":     {false, func(p plane, _ *rand.Rand) plane { return gaussianBlur(p, 2.5) }},
	"invert":   {false, func(p plane, _ *rand.Rand) plane { return p.mapPix(func(x float64) float64 { return 1 - x }) }},
	"contrast": {false, contrast},
	"noise":    {true, gaussianNoise},
	"rot90":    {false, func(p plane, _ *rand.Rand) plane { return rot90(p) }},
	"fog":      {true, fog},
	"pixelate": {false, func(p plane, _ *rand.Rand) plane { return pixelate(p, 3) }},
	"shot":     {true, shotNoise},
	"stripe":   {true, stripe},
}

// Names returns the known corruption names in sorted order.
func Names() []string {
	names := make([]string, 0, len(corruptions))
	for n := range corruptions {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Apply returns a corrupted copy of src; src is not modified. The same src, name and rng state give the same bytes.
//
// The result has src's bounds, except rot90 which swaps width and height
// (keeping the origin) for non-square images.
func Apply(name string, src *image.Gray, rng *rand.Rand) (*image.Gray, error) {
	c, ok := corruptions[name]
	if !ok {
		return nil, fmt.Errorf("corrupt: unknown corruption %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	if src == nil {
		return nil, errors.New("corrupt: nil source image")
	}
	if c.needsRNG && rng == nil {
		return nil, fmt.Errorf("corrupt: %s needs a non-nil rng", name)
	}
	b := src.Bounds()
	p := newPlane(b.Dx(), b.Dy())
	for y := range p.h {
		for x := range p.w {
			p.v[y*p.w+x] = float64(src.Pix[src.PixOffset(b.Min.X+x, b.Min.Y+y)]) / 255
		}
	}
	if len(p.v) > 0 { // empty images have no mean or max; pass them through
		p = c.fn(p, rng)
	}
	dst := image.NewGray(image.Rect(b.Min.X, b.Min.Y, b.Min.X+p.w, b.Min.Y+p.h))
	for y := range p.h {
		for x := range p.w {
			dst.Pix[y*dst.Stride+x] = uint8(math.Round(clip01(p.at(x, y)) * 255))
		}
	}
	return dst, nil
}

func clip01(x float64) float64 { return min(max(x, 0), 1) }

func clampInt(i, lo, hi int) int { return min(max(i, lo), hi) }

// gaussianBlur is separable with a normalised kernel, so mass is preserved away from edges.
func gaussianBlur(p plane, sigma float64) plane {
	r := int(math.Ceil(3 * sigma))
	k := make([]float64, 2*r+1)
	var sum float64
	for i := range k {
		d := float64(i - r)
		k[i] = math.Exp(-d * d / (2 * sigma * sigma))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	tmp, out := newPlane(p.w, p.h), newPlane(p.w, p.h)
	for y := range p.h {
		for x := range p.w {
			var s float64
			for i, kv := range k {
				s += kv * p.at(clampInt(x+i-r, 0, p.w-1), y)
			}
			tmp.v[y*p.w+x] = s
		}
	}
	for y := range p.h {
		for x := range p.w {
			var s float64
			for i, kv := range k {
				s += kv * tmp.at(x, clampInt(y+i-r, 0, p.h-1))
			}
			out.v[y*p.w+x] = s
		}
	}
	return out
}

// contrast pulls every pixel 70% of the way to the mean, washing the digit out.
func contrast(p plane, _ *rand.Rand) plane {
	var mean float64
	for _, x := range p.v {
		mean += x
	}
	mean /= float64(len(p.v))
	return p.mapPix(func(x float64) float64 { return (x-mean)*0.3 + mean })
}

func gaussianNoise(p plane, rng *rand.Rand) plane {
	return p.mapPix(func(x float64) float64 { return x + 0.5*rng.NormFloat64() })
}

// rot90 rotates clockwise: source column x becomes destination row x.
func rot90(p plane) plane {
	out := newPlane(p.h, p.w)
	for y := range p.h {
		for x := range p.w {
			out.v[x*out.w+(p.h-1-y)] = p.at(x, y)
		}
	}
	return out
}

// pixelate box-averages n×n blocks (partial blocks at the edges average what they cover).
func pixelate(p plane, n int) plane {
	out := newPlane(p.w, p.h)
	for by := 0; by < p.h; by += n {
		for bx := 0; bx < p.w; bx += n {
			ey, ex := min(by+n, p.h), min(bx+n, p.w)
			var s float64
			for y := by; y < ey; y++ {
				for x := bx; x < ex; x++ {
					s += p.at(x, y)
				}
			}
			s /= float64((ey - by) * (ex - bx))
			for y := by; y < ey; y++ {
				for x := bx; x < ex; x++ {
					out.v[y*p.w+x] = s
				}
			}
		}
	}
	return out
}

// shotNoise models photon counting: a pixel of intensity x collects Poisson(x*photons) photons.
// Few photons make the stroke visibly grainy while the black background stays black.
func shotNoise(p plane, rng *rand.Rand) plane {
	const photons = 8
	return p.mapPix(func(x float64) float64 { return float64(poisson(rng, x*photons)) / photons })
}

// poisson uses Knuth's multiplication method, exact and fast for the small means shotNoise needs.
func poisson(rng *rand.Rand, lambda float64) int {
	limit, prod, k := math.Exp(-lambda), rng.Float64(), 0
	for prod > limit {
		prod *= rng.Float64()
		k++
	}
	return k
}

// fog follows MNIST-C: x' = (x + 1.5*fog) * max(x)/(max(x)+1.5), keeping the brightest value in range.
func fog(p plane, rng *rand.Rand) plane {
	const strength = 1.5
	size := 2
	for size < max(p.w, p.h) {
		size *= 2
	}
	f := plasmaFractal(size, 2, rng)
	mx := slices.Max(p.v)
	out := newPlane(p.w, p.h)
	for y := range p.h {
		for x := range p.w {
			out.v[y*p.w+x] = (p.at(x, y) + strength*f[y*size+x]) * mx / (mx + strength)
		}
	}
	return out
}

// plasmaFractal builds a size×size (power of two) toroidal diamond-square map normalised to [0,1].
// As in the ImageNet-C/MNIST-C reference, the noise amplitude is wibble² with wibble divided
// by decay each octave, which gives smooth, cloud-like fog rather than speckle.
func plasmaFractal(size int, decay float64, rng *rand.Rand) []float64 {
	m := make([]float64, size*size)
	at := func(y, x int) *float64 { return &m[((y+size)%size)*size+(x+size)%size] }
	wibble := 1.0
	jitter := func() float64 { return wibble * wibble * (2*rng.Float64() - 1) }
	for step := size; step >= 2; step /= 2 {
		half := step / 2
		for y := 0; y < size; y += step {
			for x := 0; x < size; x += step {
				s := *at(y, x) + *at(y+step, x) + *at(y, x+step) + *at(y+step, x+step)
				*at(y+half, x+half) = s/4 + jitter()
			}
		}
		for y := 0; y < size; y += step {
			for x := 0; x < size; x += step {
				s := *at(y, x) + *at(y, x+step) + *at(y-half, x+half) + *at(y+half, x+half)
				*at(y, x+half) = s/4 + jitter()
				s = *at(y, x) + *at(y+step, x) + *at(y+half, x-half) + *at(y+half, x+half)
				*at(y+half, x) = s/4 + jitter()
			}
		}
		wibble /= decay
	}
	lo, hi := slices.Min(m), slices.Max(m)
	for i := range m {
		m[i] = (m[i] - lo) / max(hi-lo, 1e-12)
	}
	return m
}

// stripe draws 2–4 full-length bright lines, each horizontal or vertical, at rng positions.
func stripe(p plane, rng *rand.Rand) plane {
	out := p.mapPix(func(x float64) float64 { return x })
	for range 2 + rng.IntN(3) {
		if rng.IntN(2) == 0 {
			y := rng.IntN(p.h)
			for x := range p.w {
				out.v[y*p.w+x] = 1
			}
		} else {
			x := rng.IntN(p.w)
			for y := range p.h {
				out.v[y*p.w+x] = 1
			}
		}
	}
	return out
}
