package preprocess

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"slices"
	"sync"
)

// ITU-R BT.601 luma weights, the ones color.GrayModel and most gray-trained
// models assume.
const (
	lumaR = 0.299
	lumaG = 0.587
	lumaB = 0.114
)

// Fill writes img, resized and normalised, into dst (len(dst) == s.Size()) in
// the spec's layout.
//
// Colour to gray uses the BT.601 luma weights; gray to three channels
// replicates. 16-bit images keep their precision (values are v/65535 before
// Scale). Alpha is dropped by compositing onto black, which is what
// premultiplied colour already is: models trained on opaque images see a
// transparent region as dark rather than as whatever colour hid under it;
// with Alpha ignore, as that colour (PIL's convert("RGB")).
//
// Fill is safe for concurrent use. It checks s on every call; Prepare
// checks it once for many images.
func (s Spec) Fill(dst []float32, img image.Image) error {
	p, err := s.Prepare()
	if err != nil {
		return err
	}
	return p.Fill(dst, img)
}

// Prepared is a Spec with its defaults applied and checked, ready to fill
// many images. Checking a spec costs about 270 ns, which on a 28×28 digit
// was a third of Fill.
type Prepared struct {
	spec Spec
	// rgb is spec with its mean and std in RGB order, which the fill
	// writes before a BGR spec's channels are swapped.
	rgb Spec
}

// Prepare applies s's defaults and validates it.
func (s Spec) Prepare() (Prepared, error) {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return Prepared{}, err
	}
	p := Prepared{spec: s, rgb: s}
	if p.bgr() {
		p.rgb.Mean, p.rgb.Std = reversed(s.Mean), reversed(s.Std)
	}
	return p, nil
}

func (p Prepared) bgr() bool { return p.spec.Order == OrderBGR && p.spec.Channels == 3 }

func reversed(v []float32) []float32 {
	r := slices.Clone(v)
	slices.Reverse(r)
	return r
}

// Spec returns the prepared spec, its defaults applied.
func (p Prepared) Spec() Spec { return p.spec }

// Fill is Spec.Fill for the prepared spec.
func (p Prepared) Fill(dst []float32, img image.Image) error {
	if err := p.fillRGB(dst, img); err != nil {
		return err
	}
	if p.bgr() {
		swapRB(dst, p.spec)
	}
	return nil
}

// swapRB swaps the first and third channels of a filled input.
func swapRB(dst []float32, s Spec) {
	if s.Layout == LayoutNHWC {
		for i := 0; i+2 < len(dst); i += 3 {
			dst[i], dst[i+2] = dst[i+2], dst[i]
		}
		return
	}
	plane := s.Height * s.Width
	r, b := dst[:plane], dst[2*plane:3*plane]
	for i := range r {
		r[i], b[i] = b[i], r[i]
	}
}

func (p Prepared) fillRGB(dst []float32, img image.Image) error {
	s := p.rgb
	if s.Size() == 0 {
		return errors.New("preprocess: fill with a spec that was not prepared")
	}
	if img == nil {
		return errors.New("preprocess: image is nil")
	}
	if len(dst) != s.Size() {
		return fmt.Errorf("preprocess: dst has %d values, spec needs %d", len(dst), s.Size())
	}
	b := img.Bounds()
	if b.Empty() {
		return fmt.Errorf("preprocess: image is empty (bounds %v)", b)
	}
	// The demo feeds 28x28 gray digits to a 28x28 gray model many times a
	// second; going through the float buffer and resampler would cost
	// allocations and several passes for what is a per-pixel affine map.
	if g, ok := img.(*image.Gray); ok && b.Dx() == s.Width && b.Dy() == s.Height && s.Shorter == 0 {
		s.fillGrayExact(dst, g)
		return nil
	}
	s.fillGeneral(dst, img)
	return nil
}

// affine returns per-channel a, b with output = v*a + b for a source value v
// whose full scale is full. Folding Scale, Mean and Std into one multiply-add
// keeps the hot loops short; the folding is done in float64 so that it adds
// no error of its own.
func (s Spec) affine(full float64) (a, b [3]float32) {
	k := 1 / full
	if s.Scale == ScaleByte {
		k = 255 / full
	}
	for c := 0; c < s.Channels; c++ {
		mean, std := 0.0, 1.0
		if len(s.Mean) > 0 {
			mean = float64(s.Mean[c])
		}
		if len(s.Std) > 0 {
			std = float64(s.Std[c])
		}
		a[c] = float32(k / std)
		b[c] = float32(-mean / std)
	}
	return a, b
}

// u8f and u8unit map a byte to float32(u) and float32(u)/255. Table loads
// beat CVTSI2SS here: the Go compiler emits it without breaking its false
// dependency on the destination register, which serialises a pixel loop.
// u8unit is also bit-identical to PyTorch's ToTensor (u8 -> f32 / 255), so
// the unit-scaled case of an image already at the input's size matches
// what models were trained on exactly.
var u8f, u8unit = func() (f, unit [256]float32) {
	for i := range f {
		f[i] = float32(i)
		unit[i] = float32(i) / 255
	}
	return f, unit
}()

// lookup sets out[x] = lut[in[x]] for every x (len(out) = len(in)),
// unrolled by four over slices of four, whose indices need no bounds
// checks: the loop is otherwise bound by its own overhead.
func lookup(out []float32, in []byte, lut *[256]float32) {
	out = out[:len(in)]
	x := 0
	for ; x+4 <= len(in); x += 4 {
		i, o := in[x:x+4:x+4], out[x:x+4:x+4]
		o[0], o[1], o[2], o[3] = lut[i[0]], lut[i[1]], lut[i[2]], lut[i[3]]
	}
	for ; x < len(in); x++ {
		out[x] = lut[in[x]]
	}
}

// fillGrayExact handles a *image.Gray already at the spec's size.
func (s Spec) fillGrayExact(dst []float32, g *image.Gray) {
	w, h := s.Width, s.Height
	plane := w * h
	org := g.Rect.Min
	var lut *[256]float32
	if len(s.Mean) == 0 && len(s.Std) == 0 {
		lut = &u8unit
		if s.Scale == ScaleByte {
			lut = &u8f
		}
	}
	a, b := s.affine(255)
	if lut != nil && s.Channels == 1 {
		// NCHW and NHWC coincide for one channel, and the rows of a
		// whole image (stride = width) are one run of pixels.
		if i := g.PixOffset(org.X, org.Y); g.Stride == w {
			lookup(dst[:plane], g.Pix[i:i+plane], lut)
			return
		}
		for y := 0; y < h; y++ {
			i := g.PixOffset(org.X, org.Y+y)
			lookup(dst[y*w:y*w+w], g.Pix[i:i+w], lut)
		}
		return
	}
	for y := 0; y < h; y++ {
		i := g.PixOffset(org.X, org.Y+y)
		row := g.Pix[i : i+w]
		switch {
		case s.Channels == 1:
			out := dst[y*w : y*w+w]
			for x, u := range row {
				out[x] = u8f[u]*a[0] + b[0]
			}
		case s.Layout == LayoutNCHW:
			o0 := dst[y*w : y*w+w]
			o1 := dst[plane+y*w : plane+y*w+w]
			o2 := dst[2*plane+y*w : 2*plane+y*w+w]
			for x, u := range row {
				if lut != nil {
					v := lut[u]
					o0[x], o1[x], o2[x] = v, v, v
					continue
				}
				v := u8f[u]
				o0[x] = v*a[0] + b[0]
				o1[x] = v*a[1] + b[1]
				o2[x] = v*a[2] + b[2]
			}
		default:
			out := dst[3*y*w : 3*(y*w+w)]
			for x, u := range row {
				p := out[3*x : 3*x+3]
				if lut != nil {
					v := lut[u]
					p[0], p[1], p[2] = v, v, v
					continue
				}
				v := u8f[u]
				p[0] = v*a[0] + b[0]
				p[1] = v*a[1] + b[1]
				p[2] = v*a[2] + b[2]
			}
		}
	}
}

// taps is a separable resampling kernel along one axis: output i reads
// source samples first[i], first[i]+1, ... with weights w[off[i]:off[i+1]].
type taps struct {
	first []int
	off   []int
	w     []float32
	// n is the most taps any output has, and padded (made by pad) holds
	// every output's weights in n slots (padded[i*n:(i+1)*n]), the missing
	// ones zero, so that the horizontal pass runs one unrolled loop
	// instead of a loop per output. A zero weight adds +0 to the sum,
	// which leaves it as is.
	n      int
	padded []float32
}

// build fills t for out output samples covering source coordinates
// [start, start+span) of an axis with full samples. Upscaling (or keeping
// size) uses bilinear interpolation between the two nearest sample centres;
// downscaling uses a box filter over each output's footprint, i.e. area
// averaging, because bilinear would sample only 2 of many source pixels and
// alias thin strokes away. Each output's weights sum to 1 so flat regions
// stay exactly flat.
func (t *taps) build(full int, start, span float64, out int) {
	t.first = t.first[:0]
	t.off = append(t.off[:0], 0)
	t.w = t.w[:0]
	step := span / float64(out)
	for i := 0; i < out; i++ {
		if step <= 1 {
			c := start + (float64(i)+0.5)*step - 0.5
			fl := math.Floor(c)
			f := c - fl
			j0 := clampInt(int(fl), 0, full-1)
			j1 := clampInt(int(fl)+1, 0, full-1)
			if f == 0 || j0 == j1 {
				// On a sample centre or past the edge: one exact tap,
				// which makes a same-size "resize" a plain copy.
				t.first = append(t.first, j0)
				t.w = append(t.w, 1)
			} else {
				t.first = append(t.first, j0)
				t.w = append(t.w, float32(1-f), float32(f))
			}
			t.off = append(t.off, len(t.w))
			continue
		}
		lo := start + float64(i)*step
		hi := lo + step
		j0 := clampInt(int(math.Floor(lo)), 0, full-1)
		j1 := clampInt(int(math.Ceil(hi)), j0+1, full)
		base := len(t.w)
		var sum float64
		first := -1
		for j := j0; j < j1; j++ {
			cover := math.Min(hi, float64(j+1)) - math.Max(lo, float64(j))
			if cover <= 1e-9 {
				if first < 0 {
					continue // skip slivers at the leading edge
				}
				break // and at the trailing edge
			}
			if first < 0 {
				first = j
			}
			t.w = append(t.w, float32(cover))
			sum += cover
		}
		if first < 0 { // cannot happen for in-range spans; stay safe
			first = j0
			t.w = append(t.w, 1)
			sum = 1
		}
		t.add(first, base, sum)
	}
	t.widest()
}

// add ends an output that reads from source sample first, its weights
// those from base on, made to sum to 1 (they sum to sum).
func (t *taps) add(first, base int, sum float64) {
	for k := base; k < len(t.w); k++ {
		t.w[k] = float32(float64(t.w[k]) / sum)
	}
	t.first = append(t.first, first)
	t.off = append(t.off, len(t.w))
}

// widest sets t.n, the most taps of any output.
func (t *taps) widest() {
	t.n = 0
	for i := range len(t.first) {
		t.n = max(t.n, t.off[i+1]-t.off[i])
	}
}

// pilFilter is one of PIL's resampling filters (Resample.c): its kernel
// and the half-width it is non-zero over, at scale 1.
type pilFilter struct {
	kernel  func(x float64) float64
	support float64
}

var pilFilters = map[string]pilFilter{
	InterpolationBilinear: {func(x float64) float64 {
		if x = math.Abs(x); x < 1 {
			return 1 - x
		}
		return 0
	}, 1},
	InterpolationBicubic: {func(x float64) float64 {
		const a = -0.5
		switch x = math.Abs(x); {
		case x < 1:
			return ((a+2)*x-(a+3))*x*x + 1
		case x < 2:
			return (((x-5)*x+8)*x - 4) * a
		}
		return 0
	}, 2},
}

// buildPIL fills t as build does, with PIL's weights for filter f
// (precompute_coeffs): each output's kernel is centred on its footprint's
// centre and, when shrinking, stretched over the footprint, so that it
// averages (antialiases) as well as interpolates; the taps past the
// axis's ends are left out and the rest made to sum to 1.
func (t *taps) buildPIL(full int, start, span float64, out int, f pilFilter) {
	t.first = t.first[:0]
	t.off = append(t.off[:0], 0)
	t.w = t.w[:0]
	scale := span / float64(out)
	fscale := max(scale, 1)
	support := f.support * fscale
	for i := 0; i < out; i++ {
		centre := start + (float64(i)+0.5)*scale
		lo := max(int(centre-support+0.5), 0) // C's truncation, as PIL's
		hi := min(int(centre+support+0.5), full)
		base := len(t.w)
		var sum float64
		for j := lo; j < hi; j++ {
			w := f.kernel((float64(j) - centre + 0.5) / fscale)
			t.w = append(t.w, float32(w))
			sum += w
		}
		if hi <= lo || sum == 0 { // a footprint off the axis: its nearest sample
			lo = clampInt(int(centre), 0, full-1)
			t.w = append(t.w[:base], 1)
			sum = 1
		}
		t.add(lo, base, sum)
	}
	t.widest()
}

// pad fills t.padded from the taps build made.
func (t *taps) pad() {
	out := len(t.first)
	t.padded = grow(t.padded, out*t.n)
	clear(t.padded)
	for i := range out {
		copy(t.padded[i*t.n:], t.w[t.off[i]:t.off[i+1]])
	}
}

// bounds returns the half-open range of source samples t reads.
func (t *taps) bounds() (lo, hi int) {
	lo, hi = math.MaxInt, 0
	for i, f := range t.first {
		lo = min(lo, f)
		hi = max(hi, f+t.off[i+1]-t.off[i])
	}
	return lo, hi
}

func clampInt(v, lo, hi int) int {
	return max(lo, min(v, hi))
}

// scratch holds the general path's buffers, pooled so that filling an
// input allocates nothing: a few rows of a phone photo as floats are
// tens of kilobytes each.
type scratch struct {
	ring, sum, line []float32
	ringRow, at     []int
	xt, yt          taps
	pal             [256 * 3]float32
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// grow returns buf resliced to n, or a new slice if buf is too small.
func grow[T any](buf []T, n int) []T {
	if cap(buf) < n {
		return make([]T, n)
	}
	return buf[:n]
}

// cropAxis is the window, in source pixels along one axis of n (the other
// of m), that torchvision's Resize(shorter) then CenterCrop(out) keep:
// the shorter side is resized to shorter and the longer to
// int(shorter·long/short), and the crop starts at round((resized−out)/2)
// pixels of the resized image. A crop wider than the resized image (which
// torchvision pads with zeros) keeps all of it.
func cropAxis(n, m, shorter, out int) (start, length float64) {
	resized := shorter
	if n > m {
		resized = int(int64(shorter) * int64(n) / int64(m))
	}
	if out >= resized {
		return 0, float64(n)
	}
	scale := float64(n) / float64(resized)
	// Python's round, as torchvision's: halves to even.
	return math.RoundToEven(float64(resized-out)/2) * scale, float64(out) * scale
}

// fillGeneral makes each output row from the source rows it reads,
// converted to floats once each: it sums them with the vertical weights,
// resamples that line horizontally, and writes it in the spec's layout.
// Vertical first lets whole rows be summed, several samples an
// instruction (addScaledRow), and leaves the horizontal pass, which can
// not be, the output's rows only, fewer than the source's when
// downscaling. The converted rows live in a ring of as many rows as one
// output reads, so the working set stays in cache instead of the whole
// photo being materialised as floats.
func (s Spec) fillGeneral(dst []float32, img image.Image) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)

	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	w, h := s.Width, s.Height

	// Source window, in pixels relative to b.Min, that maps onto the output.
	x0, y0, rw, rh := 0.0, 0.0, float64(sw), float64(sh)
	switch {
	case s.Resize == ResizeCrop && s.Shorter > 0:
		x0, rw = cropAxis(sw, sh, s.Shorter, w)
		y0, rh = cropAxis(sh, sw, s.Shorter, h)
	case s.Resize == ResizeCrop:
		// Compare w/sw with h/sh without division so the axis that fits is
		// used exactly and only the other one is cropped.
		if int64(w)*int64(sh) >= int64(h)*int64(sw) {
			rh = float64(sw) * float64(h) / float64(w)
			y0 = (float64(sh) - rh) / 2
		} else {
			rw = float64(sh) * float64(w) / float64(h)
			x0 = (float64(sw) - rw) / 2
		}
	}
	if f, ok := pilFilters[s.Interpolation]; ok {
		sc.xt.buildPIL(sw, x0, rw, w, f)
		sc.yt.buildPIL(sh, y0, rh, h, f)
	} else {
		sc.xt.build(sw, x0, rw, w)
		sc.yt.build(sh, y0, rh, h)
	}
	sc.xt.pad() // for resampleRow
	xlo, xhi := sc.xt.bounds()
	ylo, _ := sc.yt.bounds()
	cols := xhi - xlo

	// Gray sources are resampled as one channel and replicated on output:
	// a third of the work, and exact.
	wc := s.Channels
	ignore := s.Alpha == AlphaIgnore
	var pal *[256 * 3]float32
	switch m := img.(type) {
	case *image.Gray, *image.Gray16:
		wc = 1
	case *image.Paletted:
		// Look each palette entry up once instead of once per pixel.
		// Indices past the palette read as black instead of panicking.
		pal = &sc.pal
		clear(pal[:])
		for k, c := range m.Palette[:min(len(m.Palette), 256)] {
			r, g, b := colour(c, ignore)
			put(pal[:], k*wc, wc, float32(r), float32(g), float32(b))
		}
	}

	if _, ok := pilFilters[s.Interpolation]; ok {
		s.fillRowsFirst(dst, img, sc, b.Min, xlo, xhi, ylo, wc, pal, ignore)
		return
	}

	// Output y reads source rows yt.first[y] … up to yt.n of them, the
	// windows moving down monotonically: a ring of yt.n rows holds them,
	// and each is converted once. Their sum has xt.n zero pixels past the
	// window, which the padded taps of the last outputs read.
	rowLen, stride := cols*wc, (cols+sc.xt.n)*wc
	ringN := sc.yt.n
	sc.ring = grow(sc.ring, ringN*rowLen)
	sc.ringRow = grow(sc.ringRow, ringN)
	for i := range sc.ringRow {
		sc.ringRow[i] = -1
	}
	var full float32
	row := func(r int) []float32 { // source row ylo+r, as floats
		slot := r % ringN
		buf := sc.ring[slot*rowLen : (slot+1)*rowLen]
		if sc.ringRow[slot] != r {
			full = readRow(buf, img, b.Min.Y+ylo+r, b.Min.X+xlo, b.Min.X+xhi, wc, pal, ignore)
			sc.ringRow[slot] = r
		}
		return buf
	}
	// (and one float more, which resampleRGB loads beside the last pixel)
	sc.sum = grow(sc.sum, stride+1)
	clear(sc.sum[rowLen:])
	sc.at = grow(sc.at, w)
	for x := range sc.at {
		sc.at[x] = wc * (sc.xt.first[x] - xlo)
	}
	sum := sc.sum[:rowLen]
	sc.line = grow(sc.line, w*wc)
	line := sc.line
	var a, off [3]float32
	var a4, off4 [4]float32 // for resampleRGB
	yt := &sc.yt
	plane := w * h
	for y := 0; y < h; y++ {
		ws := yt.w[yt.off[y]:yt.off[y+1]]
		r0 := yt.first[y] - ylo
		if len(ws) == 1 {
			copy(sum, row(r0))
		} else {
			clear(sum) // 0 + w·x is w·x: one kernel serves the first tap too
			for k, wt := range ws {
				addScaledRow(sum, row(r0+k), wt)
			}
		}
		if y == 0 {
			a, off = s.affine(float64(full))
			copy(a4[:], a[:])
			copy(off4[:], off[:])
		}
		if wc == 3 {
			o, step := dst[3*y*w:], 3
			o0, o1, o2 := o, o[1:], o[2:]
			if s.Layout == LayoutNCHW {
				o0, o1, o2, step = dst[y*w:], dst[plane+y*w:], dst[2*plane+y*w:], 1
			}
			if resampleRGB(o0, o1, o2, step, sc.sum, &sc.xt, sc.at, &a4, &off4) {
				continue
			}
		}
		resampleRow(line, sc.sum, &sc.xt, xlo, wc)
		s.writeRow(dst, line, y, wc, &a, &off)
	}
}

// fillRowsFirst is fillGeneral in PIL's order, for its filters: each
// source row is resampled across first, into a row of the output's width,
// and clipped and rounded as PIL's bytes are; each output row then sums
// those rows down, clipped and rounded again. (fillGeneral sums columns
// first, fewer rows to resample when shrinking; with PIL's order, the
// ring holds output-wide rows, and bicubic's overshoot is clipped where
// PIL clips it.) Source columns [xlo, xhi) and rows from ylo, counted
// from origin, are read.
func (s Spec) fillRowsFirst(dst []float32, img image.Image, sc *scratch, origin image.Point, xlo, xhi, ylo, wc int, pal *[256 * 3]float32, ignore bool) {
	w, h := s.Width, s.Height
	rowLen, lineLen := (xhi-xlo)*wc, w*wc
	// A source row, with the zero pixels past it that the last outputs'
	// padded taps read.
	sc.sum = grow(sc.sum, rowLen+sc.xt.n*wc+1)
	src := sc.sum
	clear(src[rowLen:])
	ringN := sc.yt.n
	sc.ring = grow(sc.ring, ringN*lineLen)
	sc.ringRow = grow(sc.ringRow, ringN)
	for i := range sc.ringRow {
		sc.ringRow[i] = -1
	}
	sc.at = grow(sc.at, w)
	for x := range sc.at {
		sc.at[x] = wc * (sc.xt.first[x] - xlo)
	}
	one, zero := [4]float32{1, 1, 1, 1}, [4]float32{}
	var full float32
	row := func(r int) []float32 { // source row ylo+r, resampled across
		slot := r % ringN
		out := sc.ring[slot*lineLen : (slot+1)*lineLen]
		if sc.ringRow[slot] != r {
			full = readRow(src[:rowLen], img, origin.Y+ylo+r, origin.X+xlo, origin.X+xhi, wc, pal, ignore)
			if wc != 3 || !resampleRGB(out, out[1:], out[2:], 3, src, &sc.xt, sc.at, &one, &zero) {
				resampleRow(out, src, &sc.xt, xlo, wc)
			}
			asBytes(out, full)
			sc.ringRow[slot] = r
		}
		return out
	}
	sc.line = grow(sc.line, lineLen)
	line := sc.line
	var a, off [3]float32
	yt := &sc.yt
	for y := 0; y < h; y++ {
		ws := yt.w[yt.off[y]:yt.off[y+1]]
		r0 := yt.first[y] - ylo
		clear(line)
		for k, wt := range ws {
			addScaledRow(line, row(r0+k), wt)
		}
		asBytes(line, full)
		if y == 0 {
			a, off = s.affine(float64(full))
		}
		s.writeRow(dst, line, y, wc, &a, &off)
	}
}

// asBytes clips v to [0, full] and, where full is 255, rounds it to a
// whole level, as PIL does between its passes and after them.
func asBytes(v []float32, full float32) {
	if full == 255 {
		clampRound255(v)
		return
	}
	for i, x := range v {
		if x < 0 {
			v[i] = 0
		} else if x > full {
			v[i] = full
		}
	}
}

// writeRow writes output row y, line's w pixels of wc channels in the
// source's units, into dst in the spec's layout and channels, mapped by
// the per-channel affine a·v + off.
func (s Spec) writeRow(dst, line []float32, y, wc int, a, off *[3]float32) {
	w, plane := s.Width, s.Width*s.Height
	switch {
	case s.Channels == 1:
		out := dst[y*w : y*w+w]
		for x, v := range line {
			out[x] = v*a[0] + off[0]
		}
	case wc == 1 && s.Layout == LayoutNCHW:
		for c := 0; c < 3; c++ {
			out := dst[c*plane+y*w : c*plane+y*w+w]
			for x, v := range line {
				out[x] = v*a[c] + off[c]
			}
		}
	case wc == 1:
		out := dst[3*y*w : 3*(y*w+w)]
		for x, v := range line {
			p := out[3*x : 3*x+3]
			p[0] = v*a[0] + off[0]
			p[1] = v*a[1] + off[1]
			p[2] = v*a[2] + off[2]
		}
	case s.Layout == LayoutNCHW:
		o0 := dst[y*w : y*w+w]
		o1 := dst[plane+y*w : plane+y*w+w]
		o2 := dst[2*plane+y*w : 2*plane+y*w+w]
		for x := range o0 {
			p := line[3*x : 3*x+3]
			o0[x] = float32(p[0]*a[0]) + off[0]
			o1[x] = float32(p[1]*a[1]) + off[1]
			o2[x] = float32(p[2]*a[2]) + off[2]
		}
	default:
		out := dst[3*y*w : 3*(y*w+w)]
		for x := 0; x < w; x++ {
			p, q := line[3*x:3*x+3], out[3*x:3*x+3]
			q[0] = float32(p[0]*a[0]) + off[0]
			q[1] = float32(p[1]*a[1]) + off[1]
			q[2] = float32(p[2]*a[2]) + off[2]
		}
	}
}

// resampleRow writes out[x*wc:(x+1)*wc] = Σ_k t.padded[x·n+k]·in[first_x+k]
// for every output x, in wc (1 or 3) interleaved channels, where first_x is
// t.first[x]-lo. The sums run in tap order from the first, as a loop over
// each output's own taps would; the common tap counts are unrolled. Each
// product is rounded before it is added (float32 of it: no fused
// multiply-add, which GOAMD64=v3 would otherwise allow), as resampleRGB's
// vectors do.
func resampleRow(out, in []float32, t *taps, lo, wc int) {
	n := t.n
	if wc == 1 {
		for x := range out {
			ws := t.padded[x*n : x*n+n : x*n+n]
			i := t.first[x] - lo
			p := in[i : i+n : i+n]
			switch n {
			case 1:
				out[x] = ws[0] * p[0]
			case 2:
				out[x] = float32(ws[0]*p[0]) + float32(ws[1]*p[1])
			case 3:
				out[x] = float32(ws[0]*p[0]) + float32(ws[1]*p[1]) + float32(ws[2]*p[2])
			default:
				var acc float32
				for k, wt := range ws {
					acc += float32(wt * p[k])
				}
				out[x] = acc
			}
		}
		return
	}
	for x := 0; x < len(out)/3; x++ {
		ws := t.padded[x*n : x*n+n : x*n+n]
		i := 3 * (t.first[x] - lo)
		o := out[3*x : 3*x+3 : 3*x+3]
		switch n {
		case 1:
			p := in[i : i+3 : i+3]
			o[0], o[1], o[2] = ws[0]*p[0], ws[0]*p[1], ws[0]*p[2]
		case 2:
			p := in[i : i+6 : i+6]
			o[0] = float32(ws[0]*p[0]) + float32(ws[1]*p[3])
			o[1] = float32(ws[0]*p[1]) + float32(ws[1]*p[4])
			o[2] = float32(ws[0]*p[2]) + float32(ws[1]*p[5])
		case 3:
			p := in[i : i+9 : i+9]
			o[0] = float32(ws[0]*p[0]) + float32(ws[1]*p[3]) + float32(ws[2]*p[6])
			o[1] = float32(ws[0]*p[1]) + float32(ws[1]*p[4]) + float32(ws[2]*p[7])
			o[2] = float32(ws[0]*p[2]) + float32(ws[1]*p[5]) + float32(ws[2]*p[8])
		default:
			p := in[i : i+3*n : i+3*n]
			var r, g, b float32
			for k, wt := range ws {
				r += float32(wt * p[3*k])
				g += float32(wt * p[3*k+1])
				b += float32(wt * p[3*k+2])
			}
			o[0], o[1], o[2] = r, g, b
		}
	}
}

// colour is c's 16-bit RGB: composited onto black (as color.Color's RGBA
// is), or with ignore the colour as stored, whatever its alpha.
func colour(c color.Color, ignore bool) (r, g, b uint32) {
	if !ignore {
		r, g, b, _ = c.RGBA()
		return r, g, b
	}
	switch n := c.(type) { // a PNG palette's entries: stored, not premultiplied
	case color.NRGBA:
		return uint32(n.R) * 0x101, uint32(n.G) * 0x101, uint32(n.B) * 0x101
	case color.NRGBA64:
		return uint32(n.R), uint32(n.G), uint32(n.B)
	}
	// Premultiplied: what is left of the colour, which a pixel of no
	// alpha at all has lost (image/gif's transparent entry, say).
	n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
	return uint32(n.R), uint32(n.G), uint32(n.B)
}

// readRow writes pixels [x0, x1) of row y of img into buf as wc (1 or 3)
// interleaved channels and returns the value that stands for full intensity
// (255 or 65535). Values stay in the source's own units so that 8-bit
// inputs are exact integers until the final affine step. Common concrete
// types are read directly; anything else goes through At, which is slower
// but correct. pal is the prepared palette for *image.Paletted. ignore
// keeps the colour stored under a transparent pixel (Spec.Alpha).
func readRow(buf []float32, img image.Image, y, x0, x1, wc int, pal *[256 * 3]float32, ignore bool) float32 {
	cols := x1 - x0
	i := 0
	switch m := img.(type) {
	case *image.Gray:
		bytesToFloats(buf[:cols], m.Pix[m.PixOffset(x0, y):])
		return 255
	case *image.Gray16:
		p := m.Pix[m.PixOffset(x0, y):][:2*cols]
		for k := 0; k < len(p); k += 2 {
			buf[k/2] = float32(uint16(p[k])<<8 | uint16(p[k+1]))
		}
		return 65535
	case *rgb:
		p := m.Pix[m.PixOffset(x0, y):][:3*cols]
		if wc == 3 {
			bytesToFloats(buf[:3*cols], p)
			return 255
		}
		for k := 0; k+3 <= len(p); k += 3 {
			i = put(buf, i, wc, u8f[p[k]], u8f[p[k+1]], u8f[p[k+2]])
		}
		return 255
	case *image.RGBA:
		// Already premultiplied, i.e. composited on black: with ignore,
		// its colour is what the premultiplying left of it.
		p := m.Pix[m.PixOffset(x0, y):][:4*cols]
		if ignore && !opaqueRow(p, 4) {
			for k := 0; k < len(p); k += 4 {
				r, g, b := u8f[p[k]], u8f[p[k+1]], u8f[p[k+2]]
				if al := p[k+3]; al != 0xff && al != 0 { // what premultiplying left of the colour
					f := 255 / float32(al)
					r, g, b = r*f, g*f, b*f
				}
				i = put(buf, i, wc, r, g, b)
			}
			return 255
		}
		if wc == 3 { // a decoded RGB PNG's: without put's branch per pixel
			out := buf[:3*cols]
			for k, j := 0, 0; k+4 <= len(p) && j+3 <= len(out); k, j = k+4, j+3 {
				out[j], out[j+1], out[j+2] = u8f[p[k]], u8f[p[k+1]], u8f[p[k+2]]
			}
			return 255
		}
		for k := 0; k < len(p); k += 4 {
			i = put(buf, i, wc, u8f[p[k]], u8f[p[k+1]], u8f[p[k+2]])
		}
		return 255
	case *image.NRGBA:
		p := m.Pix[m.PixOffset(x0, y):][:4*cols]
		for k := 0; k < len(p); k += 4 {
			r, g, b := u8f[p[k]], u8f[p[k+1]], u8f[p[k+2]]
			if al := p[k+3]; al != 0xff && !ignore {
				f := u8unit[al]
				r, g, b = r*f, g*f, b*f
			}
			i = put(buf, i, wc, r, g, b)
		}
		return 255
	case *image.RGBA64:
		p := m.Pix[m.PixOffset(x0, y):][:8*cols]
		if ignore && !opaqueRow(p, 8) {
			break // to At's colour, pixel by pixel
		}
		for k := 0; k < len(p); k += 8 {
			i = put(buf, i, wc, be16(p[k:]), be16(p[k+2:]), be16(p[k+4:]))
		}
		return 65535
	case *image.NRGBA64:
		p := m.Pix[m.PixOffset(x0, y):][:8*cols]
		for k := 0; k < len(p); k += 8 {
			r, g, b := be16(p[k:]), be16(p[k+2:]), be16(p[k+4:])
			if al := be16(p[k+6:]); al != 65535 && !ignore {
				f := al / 65535
				r, g, b = r*f, g*f, b*f
			}
			i = put(buf, i, wc, r, g, b)
		}
		return 65535
	case *image.YCbCr:
		ys := m.Y[m.YOffset(x0, y):][:cols]
		if wc == 1 {
			// JFIF's Y is the BT.601 luma already; using it skips a
			// lossy round trip through 8-bit RGB.
			bytesToFloats(buf[:cols], ys)
			return 255
		}
		out := buf[:3*cols]
		if x0 < 0 {
			// COffset divides x, which rounds a negative x up where the
			// shift below rounds it down: such an image asks it.
			for k, yy := range ys {
				ci := m.COffset(x0+k, y)
				r, g, b := color.YCbCrToRGB(yy, m.Cb[ci], m.Cr[ci])
				out[3*k], out[3*k+1], out[3*k+2] = u8f[r], u8f[g], u8f[b]
			}
			return 255
		}
		// COffset per pixel is a method and a switch on the subsampling:
		// a row's chroma offsets step by one every 1<<sh columns instead.
		sh := chromaShift(m.SubsampleRatio)
		c0 := m.COffset(x0, y) - x0>>sh
		convert := func(from, to int) {
			for k := from; k < to; k++ {
				ci := c0 + (x0+k)>>sh
				r, g, b := color.YCbCrToRGB(ys[k], m.Cb[ci], m.Cr[ci])
				out[3*k], out[3*k+1], out[3*k+2] = u8f[r], u8f[g], u8f[b]
			}
		}
		k := 0
		if sh <= 1 {
			// Eight pixels a step, which pairs columns x0+k, x0+k+1 on a
			// chroma sample when they share one: an odd x0 goes alone.
			k = x0 & sh
			convert(0, k)
			ci := c0 + (x0+k)>>sh
			k += ycbcrRowVec(out[3*k:], ys[k:], m.Cb[ci:], m.Cr[ci:], sh == 1)
		}
		convert(k, cols)
		return 255
	case *image.NYCbCrA:
		for x := x0; x < x1; x++ {
			yi, ci := m.YOffset(x, y), m.COffset(x, y)
			f := u8unit[m.A[m.AOffset(x, y)]]
			if ignore {
				f = 1
			}
			if wc == 1 {
				buf[i] = u8f[m.Y[yi]] * f
				i++
				continue
			}
			r, g, b := color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
			i = put(buf, i, wc, u8f[r]*f, u8f[g]*f, u8f[b]*f)
		}
		return 255
	case *image.Paletted:
		p := m.Pix[m.PixOffset(x0, y):][:cols]
		for _, u := range p {
			j := int(u) * wc
			copy(buf[i:i+wc], pal[j:j+wc])
			i += wc
		}
		return 65535
	}
	for x := x0; x < x1; x++ {
		r, g, b := colour(img.At(x, y), ignore)
		i = put(buf, i, wc, float32(r), float32(g), float32(b))
	}
	return 65535
}

// opaqueRow says whether every pixel of a row of size bytes each, its
// alpha last, is opaque.
func opaqueRow(p []byte, size int) bool {
	for k := size - 1; k < len(p); k += size {
		if p[k] != 0xff || size == 8 && p[k-1] != 0xff {
			return false
		}
	}
	return true
}

// chromaShift is log2 of how many columns share a chroma sample: along a
// row, COffset(x, y) is COffset(x0, y) + x>>sh - x0>>sh for x, x0 ≥ 0.
func chromaShift(r image.YCbCrSubsampleRatio) int {
	switch r {
	case image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420:
		return 1
	case image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410:
		return 2
	}
	return 0
}

// put stores one pixel as wc channels at buf[i:] and returns the next index.
func put(buf []float32, i, wc int, r, g, b float32) int {
	if wc == 1 {
		buf[i] = lumaR*r + lumaG*g + lumaB*b
		return i + 1
	}
	buf[i], buf[i+1], buf[i+2] = r, g, b
	return i + 3
}

func be16(p []byte) float32 {
	return float32(uint16(p[0])<<8 | uint16(p[1]))
}
