package preprocess

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"dcd/internal/mnist"
)

// decodeBefore is Decode as it was before the PNG fast path. Every file the
// fast path declines must give exactly this result.
func decodeBefore(data []byte) (image.Image, error) {
	if len(data) == 0 {
		return nil, errors.New("preprocess: decode: empty input")
	}
	return decodeStd(data)
}

// A test-only PNG encoder, so that tests control what image/png never
// writes: each filter type, gray+alpha, split and empty IDAT chunks,
// interlacing, tRNS on gray and RGB, and broken files.

type testChunk struct {
	typ  string
	data []byte
}

func pngOf(chunks ...testChunk) []byte {
	b := []byte(pngSignature)
	for _, c := range chunks {
		b = binary.BigEndian.AppendUint32(b, uint32(len(c.data)))
		start := len(b)
		b = append(b, c.typ...)
		b = append(b, c.data...)
		b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
	}
	return b
}

func ihdr(w, h int, depth, ct, interlace byte) testChunk {
	b := binary.BigEndian.AppendUint32(nil, uint32(w))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	return testChunk{"IHDR", append(b, depth, ct, 0, 0, interlace)}
}

var iend = testChunk{"IEND", nil}

// filterRows filters the h rows of raw, choosing row y's filter with pick.
func filterRows(raw []byte, h, bpp int, pick func(y int) byte) []byte {
	n := len(raw) / h
	var out []byte
	prev := make([]byte, n)
	for y := range h {
		row := raw[y*n : (y+1)*n]
		ft := pick(y)
		out = append(out, ft)
		for i, v := range row {
			var a, c byte
			if i >= bpp {
				a, c = row[i-bpp], prev[i-bpp]
			}
			b := prev[i]
			switch ft {
			case 1:
				v -= a
			case 2:
				v -= b
			case 3:
				v -= uint8((int(a) + int(b)) / 2)
			case 4:
				v -= paethSpec(a, b, c)
			}
			out = append(out, v)
		}
		prev = row
	}
	return out
}

// paethSpec is the PNG specification's PaethPredictor, written out as there
// so that the encoder does not share the decoder's arithmetic.
func paethSpec(a, b, c byte) byte {
	p := int(a) + int(b) - int(c)
	pa, pb, pc := p-int(a), p-int(b), p-int(c)
	pa, pb, pc = max(pa, -pa), max(pb, -pb), max(pc, -pc)
	switch {
	case pa <= pb && pa <= pc:
		return a
	case pb <= pc:
		return b
	}
	return c
}

func deflate(t testing.TB, stream []byte, level int) []byte {
	var buf bytes.Buffer
	w, err := zlib.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(stream)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// idats splits z into IDAT chunks of at most size bytes.
func idats(z []byte, size int) []testChunk {
	var cs []testChunk
	for len(z) > size {
		cs = append(cs, testChunk{"IDAT", z[:size]})
		z = z[size:]
	}
	return append(cs, testChunk{"IDAT", z})
}

// testImage is raw 8-bit pixel data in PNG order.
type testImage struct {
	w, h int
	ct   byte
	raw  []byte
}

func randomImage(rng *rand.Rand, w, h int, ct byte) testImage {
	bpp := bytesPerPixel(ct)
	raw := make([]byte, w*h*bpp)
	for i := range raw {
		x, y := i/bpp%w, i/bpp/w
		// Gradients with noise, so that every filter type wins somewhere
		// when image/png picks them.
		switch (x / 5) % 3 {
		case 0:
			raw[i] = byte(x*7 + y*3 + i%bpp*50)
		case 1:
			raw[i] = byte(rng.IntN(256))
		default:
			raw[i] = byte(x*y + rng.IntN(4))
		}
	}
	return testImage{w, h, ct, raw}
}

// encode writes m with row filters from pick and IDAT chunks of at most
// split bytes; extra chunks go between IHDR and IDAT.
func (m testImage) encode(t testing.TB, pick func(y int) byte, split int, extra ...testChunk) []byte {
	z := deflate(t, filterRows(m.raw, m.h, bytesPerPixel(m.ct), pick), zlib.DefaultCompression)
	chunks := append([]testChunk{ihdr(m.w, m.h, 8, m.ct, 0)}, extra...)
	chunks = append(chunks, idats(z, split)...)
	return pngOf(append(chunks, iend)...)
}

// interlaced writes m with Adam7 interlacing and no filtering.
func (m testImage) interlaced(t testing.TB) []byte {
	bpp := bytesPerPixel(m.ct)
	var stream []byte
	for _, p := range [7][4]int{{8, 8, 0, 0}, {8, 8, 4, 0}, {4, 8, 0, 4}, {4, 4, 2, 0}, {2, 4, 0, 2}, {2, 2, 1, 0}, {1, 2, 0, 1}} {
		xf, yf, xo, yo := p[0], p[1], p[2], p[3]
		if xo >= m.w || yo >= m.h {
			continue
		}
		for y := yo; y < m.h; y += yf {
			stream = append(stream, 0)
			for x := xo; x < m.w; x += xf {
				i := (y*m.w + x) * bpp
				stream = append(stream, m.raw[i:i+bpp]...)
			}
		}
	}
	return pngOf(ihdr(m.w, m.h, 8, m.ct, 1), testChunk{"IDAT", deflate(t, stream, 6)}, iend)
}

func filterNone(int) byte { return 0 }

func filterCycle(y int) byte { return byte(y % 5) }

// checkFast requires the fast path to handle data and to agree with
// image/png and with Decode.
func checkFast(t *testing.T, data []byte) {
	t.Helper()
	got, ok := decodePNG(data)
	if !ok {
		t.Fatal("fast path declined")
	}
	want, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("image/png: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fast path gave %T %v, image/png %T %v", got, got.Bounds(), want, want.Bounds())
	}
	if img, err := Decode(data); err != nil || !reflect.DeepEqual(img, want) {
		t.Fatalf("Decode differs from image/png (err %v)", err)
	}
}

// checkFallback requires the fast path to decline data and Decode to give
// exactly what it gave before the fast path existed.
func checkFallback(t *testing.T, data []byte) {
	t.Helper()
	if _, ok := decodePNG(data); ok {
		t.Fatal("fast path handled a file it should leave to image/png")
	}
	got, gotErr := Decode(data)
	want, wantErr := decodeBefore(data)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode = %T, %v; before the fast path %T, %v", got, gotErr, want, wantErr)
	}
}

func stdlibPNG(t testing.TB, m image.Image, level png.CompressionLevel) []byte {
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: level}).Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// stdlibImage converts m to an image that image/png encodes as colour type
// m.ct (and bit depth 8), except gray+alpha, which it never writes.
func stdlibImage(m testImage, rng *rand.Rand) image.Image {
	r := image.Rect(0, 0, m.w, m.h)
	switch m.ct {
	case ctGray:
		return &image.Gray{Pix: m.raw, Stride: m.w, Rect: r}
	case ctRGB:
		out := image.NewRGBA(r)
		putRow(ctRGB, out.Pix, m.raw)
		return out
	case ctPaletted:
		// Over 16 entries keeps the depth at 8; some translucent ones make
		// image/png write tRNS.
		pal := make(color.Palette, 17+rng.IntN(240))
		for i := range pal {
			pal[i] = color.NRGBA{uint8(i * 3), uint8(i * 5), uint8(i * 7), uint8(255 - i%3*100)}
		}
		out := image.NewPaletted(r, pal)
		for i, v := range m.raw {
			out.Pix[i] = uint8(int(v) % len(pal))
		}
		return out
	default:
		return &image.NRGBA{Pix: m.raw, Stride: 4 * m.w, Rect: r}
	}
}

var testSizes = [][2]int{{1, 1}, {1, 9}, {9, 1}, {3, 5}, {7, 7}, {28, 28}, {31, 4}, {300, 7}, {256, 256}}

func TestDecodePNGMatchesImagePNG(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	levels := []png.CompressionLevel{png.DefaultCompression, png.NoCompression, png.BestSpeed, png.BestCompression}
	for _, ct := range []byte{ctGray, ctRGB, ctPaletted, ctGrayAlpha, ctRGBA} {
		for _, size := range testSizes {
			m := randomImage(rng, size[0], size[1], ct)
			t.Run(fmt.Sprintf("ct%d/%dx%d", ct, m.w, m.h), func(t *testing.T) {
				if ct == ctGrayAlpha {
					checkFast(t, m.encode(t, filterCycle, 1<<15))
					return
				}
				img := stdlibImage(m, rng)
				for _, level := range levels {
					checkFast(t, stdlibPNG(t, img, level))
				}
			})
		}
	}
}

func TestDecodePNGFilters(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, ct := range []byte{ctGray, ctRGB, ctPaletted, ctGrayAlpha, ctRGBA} {
		var plte []testChunk
		if ct == ctPaletted {
			plte = []testChunk{{"PLTE", randomImage(rng, 256, 1, ctRGB).raw}}
		}
		for _, size := range [][2]int{{1, 1}, {5, 3}, {17, 9}, {28, 28}} {
			m := randomImage(rng, size[0], size[1], ct)
			for ft := range byte(5) {
				t.Run(fmt.Sprintf("ct%d/%dx%d/filter%d", ct, m.w, m.h, ft), func(t *testing.T) {
					// Tiny IDAT chunks make the deflate stream, its header
					// and its checksum straddle chunk boundaries.
					checkFast(t, m.encode(t, func(int) byte { return ft }, 7, plte...))
				})
			}
			t.Run(fmt.Sprintf("ct%d/%dx%d/mixed", ct, m.w, m.h), func(t *testing.T) {
				checkFast(t, m.encode(t, filterCycle, 1, plte...))
			})
		}
	}
}

func TestDecodePNGChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	m := randomImage(rng, 6, 4, ctGray)
	z := deflate(t, filterRows(m.raw, m.h, 1, filterCycle), zlib.BestCompression)
	text := testChunk{"tEXt", []byte("Comment\x00made by a test")}
	empty := testChunk{"IDAT", nil}
	p := randomImage(rng, 7, 5, ctPaletted)
	tests := []struct {
		name   string
		chunks []testChunk
	}{
		{"ancillary chunks", []testChunk{ihdr(6, 4, 8, ctGray, 0), text, {"IDAT", z}, text, iend}},
		{"empty IDAT chunks first and inside", []testChunk{ihdr(6, 4, 8, ctGray, 0), empty, {"IDAT", z[:5]}, empty, {"IDAT", z[5:]}, iend}},
		{"short palette extended by pixels", []testChunk{
			ihdr(7, 5, 8, ctPaletted, 0), {"PLTE", []byte{1, 2, 3, 4, 5, 6}},
			{"IDAT", deflate(t, filterRows(p.raw, p.h, 1, filterCycle), 6)}, iend}},
		{"tRNS longer than palette", []testChunk{
			ihdr(7, 5, 8, ctPaletted, 0), {"PLTE", []byte{1, 2, 3, 4, 5, 6}}, {"tRNS", []byte{9, 8, 7, 6}},
			{"IDAT", deflate(t, filterRows(p.raw, p.h, 1, filterCycle), 6)}, iend}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkFast(t, pngOf(tc.chunks...)) })
	}
}

// fallbackCases are files that image/png must decide about, named.
func fallbackCases(t testing.TB) map[string][]byte {
	rng := rand.New(rand.NewPCG(7, 8))
	g := randomImage(rng, 9, 6, ctGray)
	rgb := randomImage(rng, 9, 6, ctRGB)
	ok := g.encode(t, filterCycle, 1<<15)
	z := deflate(t, filterRows(g.raw, g.h, 1, filterCycle), 6)
	head := ihdr(g.w, g.h, 8, ctGray, 0)
	withZ := func(z []byte) []byte { return pngOf(head, testChunk{"IDAT", z}, iend) }
	flip := func(b []byte, at int) []byte {
		b = bytes.Clone(b)
		b[at] ^= 1
		return b
	}
	stream := filterRows(g.raw, g.h, 1, filterCycle)
	badFilter := bytes.Clone(stream)
	badFilter[len(badFilter)-g.w-1] = 5
	paletted16 := make(color.Palette, 16)
	for i := range paletted16 {
		paletted16[i] = color.RGBA{uint8(i), 0, 0, 255}
	}
	text := testChunk{"tEXt", []byte("a\x00b")}
	cases := map[string][]byte{
		"interlaced":                   g.interlaced(t),
		"interlaced RGB":               rgb.interlaced(t),
		"16-bit gray":                  stdlibPNG(t, image.NewGray16(image.Rect(0, 0, 5, 3)), png.DefaultCompression),
		"16-bit RGBA":                  stdlibPNG(t, image.NewNRGBA64(image.Rect(0, 0, 5, 3)), png.DefaultCompression),
		"4-bit paletted":               stdlibPNG(t, image.NewPaletted(image.Rect(0, 0, 5, 3), paletted16), png.DefaultCompression),
		"1-bit gray":                   pngOf(ihdr(8, 1, 1, ctGray, 0), testChunk{"IDAT", deflate(t, []byte{0, 0xa5}, 6)}, iend),
		"gray with tRNS":               g.encode(t, filterCycle, 1<<15, testChunk{"tRNS", []byte{0, g.raw[0]}}),
		"RGB with tRNS":                rgb.encode(t, filterCycle, 1<<15, testChunk{"tRNS", []byte{0, rgb.raw[0], 0, rgb.raw[1], 0, rgb.raw[2]}}),
		"RGB with PLTE":                rgb.encode(t, filterCycle, 1<<15, testChunk{"PLTE", []byte{1, 2, 3}}),
		"gray+alpha with tRNS":         randomImage(rng, 3, 3, ctGrayAlpha).encode(t, filterNone, 1<<15, testChunk{"tRNS", []byte{0, 1}}),
		"paletted without PLTE":        randomImage(rng, 3, 3, ctPaletted).encode(t, filterNone, 1<<15),
		"unknown critical chunk":       g.encode(t, filterCycle, 1<<15, testChunk{"CRIT", []byte{1}}),
		"ancillary before IHDR":        pngOf(text, head, testChunk{"IDAT", z}, iend),
		"bad IHDR CRC":                 flip(ok, 8+8+13),
		"bad IDAT CRC":                 flip(ok, len(ok)-12-1),
		"bad IEND CRC":                 flip(ok, len(ok)-1),
		"bad IDAT data":                flip(ok, 8+25+8+3),
		"bad ancillary CRC":            flip(pngOf(head, text, testChunk{"IDAT", z}, iend), 8+25+8+len(text.data)),
		"bad Adler-32":                 withZ(append(bytes.Clone(z[:len(z)-1]), z[len(z)-1]^1)),
		"preset dictionary":            withZ(append([]byte{0x78, 0xbb}, z[2:]...)),
		"bad zlib header":              withZ(append([]byte{0x78, 0x9d}, z[2:]...)),
		"too little pixel data":        withZ(deflate(t, stream[:len(stream)-1], 6)),
		"too much pixel data":          withZ(deflate(t, append(bytes.Clone(stream), 0), 6)),
		"bad filter type":              withZ(deflate(t, badFilter, 6)),
		"data after zlib stream":       withZ(append(bytes.Clone(z), 0)),
		"trailing empty IDAT":          pngOf(head, testChunk{"IDAT", z}, testChunk{"IDAT", nil}, iend),
		"IDAT after ancillary":         pngOf(head, testChunk{"IDAT", z[:4]}, text, testChunk{"IDAT", z[4:]}, iend),
		"bytes after IEND":             append(bytes.Clone(ok), 0),
		"chunk after IEND":             pngOf(head, testChunk{"IDAT", z}, iend, text),
		"no IEND":                      pngOf(head, testChunk{"IDAT", z}),
		"no IDAT":                      pngOf(head, iend),
		"IEND with data":               pngOf(head, testChunk{"IDAT", z}, testChunk{"IEND", []byte{0}}),
		"zero width":                   pngOf(ihdr(0, 1, 8, ctGray, 0), testChunk{"IDAT", z}, iend),
		"too little data for its size": pngOf(ihdr(4000, 4000, 8, ctGray, 0), testChunk{"IDAT", z}, iend),
		"too many pixels":              pngOf(ihdr(1<<13, 1<<13+1, 8, ctGray, 0), testChunk{"IDAT", z}, iend),
		"bad colour type":              pngOf(ihdr(g.w, g.h, 8, 5, 0), testChunk{"IDAT", z}, iend),
		"truncated":                    ok[:len(ok)-5],
		"signature only":               []byte(pngSignature),
		"not a PNG":                    []byte("GIF89a"),
		"huge chunk length":            append(bytes.Clone(ok[:33]), 0xff, 0xff, 0xff, 0xff, 't', 'E', 'X', 't'),
		"two PLTE chunks":              randomImage(rng, 3, 3, ctPaletted).encode(t, filterNone, 1<<15, testChunk{"PLTE", []byte{1, 2, 3}}, testChunk{"PLTE", []byte{1, 2, 3}}),
		"tRNS before PLTE":             randomImage(rng, 3, 3, ctPaletted).encode(t, filterNone, 1<<15, testChunk{"tRNS", []byte{1}}, testChunk{"PLTE", []byte{1, 2, 3}}),
		"PLTE of 257 entries":          randomImage(rng, 3, 3, ctPaletted).encode(t, filterNone, 1<<15, testChunk{"PLTE", make([]byte, 3*257)}),
		"PLTE not a multiple of 3":     randomImage(rng, 3, 3, ctPaletted).encode(t, filterNone, 1<<15, testChunk{"PLTE", make([]byte, 4)}),
	}
	return cases
}

func TestDecodePNGFallback(t *testing.T) {
	for name, data := range fallbackCases(t) {
		t.Run(name, func(t *testing.T) { checkFallback(t, data) })
	}
}

func TestDecodePNGTruncated(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	data := randomImage(rng, 5, 4, ctRGBA).encode(t, filterCycle, 20, testChunk{"tEXt", []byte("x\x00y")})
	checkFast(t, data)
	for n := range len(data) {
		t.Run(fmt.Sprint(n), func(t *testing.T) { checkFallback(t, data[:n]) })
	}
}

// TestDecodePNGOwnsPixels guards against returning pooled memory: a later
// decode must not change an image already returned.
func TestDecodePNGOwnsPixels(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	a := randomImage(rng, 28, 28, ctGray)
	b := randomImage(rng, 28, 28, ctGray)
	first, err := Decode(a.encode(t, filterCycle, 1<<15))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(b.encode(t, filterCycle, 1<<15)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.(*image.Gray).Pix, a.raw) {
		t.Fatal("first image changed by the second decode")
	}
}

func TestDecodePNGConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	var files [][]byte
	for _, ct := range []byte{ctGray, ctRGB, ctGrayAlpha, ctRGBA} {
		for _, size := range testSizes[:8] {
			files = append(files, randomImage(rng, size[0], size[1], ct).encode(t, filterCycle, 64))
		}
	}
	want := make([]image.Image, len(files))
	for i, f := range files {
		var err error
		if want[i], err = png.Decode(bytes.NewReader(f)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 * len(files) {
				j := (i + g) % len(files)
				if got, err := Decode(files[j]); err != nil || !reflect.DeepEqual(got, want[j]) {
					t.Errorf("file %d: got %v", j, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzDecodePNG(f *testing.F) {
	rng := rand.New(rand.NewPCG(15, 16))
	for _, ct := range []byte{ctGray, ctRGB, ctPaletted, ctGrayAlpha, ctRGBA} {
		m := randomImage(rng, 5, 3, ct)
		var plte []testChunk
		if ct == ctPaletted {
			plte = []testChunk{{"PLTE", make([]byte, 3*200)}, {"tRNS", []byte{1, 2}}}
		}
		f.Add(m.encode(f, filterCycle, 9, plte...))
		if ct != ctGrayAlpha {
			f.Add(stdlibPNG(f, stdlibImage(m, rng), png.BestSpeed))
		}
	}
	for _, data := range fallbackCases(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgrees(t, data)
		// Most mutations break a CRC, which the fast path rejects at once;
		// with CRCs repaired they reach the decoder proper.
		checkAgrees(t, fixCRCs(bytes.Clone(data)))
	})
}

// checkAgrees fails if the fast path returns an image that image/png does
// not return for data.
func checkAgrees(t *testing.T, data []byte) {
	t.Helper()
	got, ok := decodePNG(data)
	if !ok {
		return
	}
	want, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("fast path decoded a file image/png rejects: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fast path gave %T %v, image/png %T %v", got, got.Bounds(), want, want.Bounds())
	}
}

// fixCRCs rewrites the CRC of every complete chunk in b.
func fixCRCs(b []byte) []byte {
	for i := len(pngSignature); i+12 <= len(b); {
		end := i + 8 + int(binary.BigEndian.Uint32(b[i:]))
		if end < i || end+4 > len(b) {
			break
		}
		binary.BigEndian.PutUint32(b[end:], crc32.ChecksumIEEE(b[i+4:end]))
		i = end + 4
	}
	return b
}

// digit is a 28x28 gray ring, compressed like an MNIST digit.
func digit() *image.Gray {
	m := image.NewGray(image.Rect(0, 0, 28, 28))
	for y := range 28 {
		for x := range 28 {
			if r := (x-14)*(x-14) + (y-14)*(y-14); r > 25 && r < 80 {
				m.Pix[y*28+x] = uint8(150 + x + 2*y)
			}
		}
	}
	return m
}

func BenchmarkDecodePNG(b *testing.B) {
	rgba := image.NewNRGBA(image.Rect(0, 0, 256, 256))
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(i/4%256 ^ i/1024 + i%4*40)
	}
	for _, bc := range []struct {
		name string
		img  image.Image
	}{
		{"gray28", digit()},
		{"rgb256", photo(256, 256)},
		{"rgba256", rgba},
	} {
		data := stdlibPNG(b, bc.img, png.DefaultCompression)
		if _, ok := decodePNG(data); !ok {
			b.Fatalf("%s: fast path declined", bc.name)
		}
		for _, path := range []struct {
			name   string
			decode func([]byte) (image.Image, error)
		}{{"fast", Decode}, {"image_png", decodeBefore}} {
			b.Run(bc.name+"/"+path.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if _, err := path.decode(data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestDecodeFillMatchesDecode checks that the reused pixels of DecodeFill
// give what Decode then Fill give, in any order of sizes and colour types
// (so a large image's stale pixels never show through a smaller one), and
// for files the fast path declines or nothing decodes.
func TestDecodeFillMatchesDecode(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var files [][]byte
	for _, size := range [][2]int{{40, 40}, {28, 28}, {3, 5}, {64, 20}, {28, 28}} {
		for _, ct := range []byte{ctGray, ctRGB, ctPaletted, ctGrayAlpha, ctRGBA} {
			m := randomImage(rng, size[0], size[1], ct)
			files = append(files, m.encode(t, filterCycle, 1<<15))
		}
	}
	fallback := fallbackCases(t)
	for _, name := range slices.Sorted(maps.Keys(fallback)) {
		files = append(files, fallback[name])
	}
	files = append(files, nil, []byte("not an image"))
	for _, spec := range []Spec{
		{Channels: 1, Height: 28, Width: 28, Resize: ResizeSquash},
		{Channels: 3, Height: 16, Width: 16, Resize: ResizeCrop, Mean: []float32{0.5, 0.4, 0.3}, Std: []float32{0.2, 0.2, 0.2}},
	} {
		for i, data := range files {
			want := make([]float32, spec.Size())
			img, wantErr := Decode(data)
			if wantErr == nil {
				wantErr = spec.Fill(want, img)
			}
			got := make([]float32, spec.Size())
			p, err := spec.Prepare()
			if err != nil {
				t.Fatal(err)
			}
			err = p.DecodeFill(got, data)
			if fmt.Sprint(err) != fmt.Sprint(wantErr) || !reflect.DeepEqual(got, want) {
				t.Fatalf("file %d, %d channels: DecodeFill gave error %v, Decode and Fill %v; same tensor %v", i, spec.Channels, err, wantErr, reflect.DeepEqual(got, want))
			}
		}
	}
}

// TestUnfilterRowsMatchesSpec unfilters images whose rows are random and
// mostly Paeth-filtered, in runs of one to three (pairs go through
// paethRows),
// of every pixel size and of widths around the vector loops' bounds,
// against the PNG specification's predictor, row by row.
func TestUnfilterRowsMatchesSpec(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	for _, bpp := range []int{1, 2, 3, 4, 6, 8} {
		for pixels := 1; pixels < 24; pixels++ {
			rowLen := 1 + pixels*bpp
			const rows = 9
			raw := make([]byte, rows*rowLen)
			for i := range raw {
				raw[i] = uint8(rng.IntN(256))
			}
			for y := range rows {
				raw[y*rowLen] = []byte{4, 4, 2, 4, 4, 4, 1, 4, 4}[y]
			}
			want := slices.Clone(raw)
			prev := make([]byte, rowLen)
			for y := range rows {
				cur := want[y*rowLen+1 : (y+1)*rowLen]
				for i := range cur {
					var a, ul byte
					if i >= bpp {
						a, ul = cur[i-bpp], prev[1+i-bpp]
					}
					switch want[y*rowLen] {
					case 4:
						cur[i] += paethSpec(a, prev[1+i], ul)
					case 2:
						cur[i] += prev[1+i]
					case 1:
						cur[i] += a
					}
				}
				prev = want[y*rowLen : (y+1)*rowLen]
			}
			prev = make([]byte, rowLen)
			for y := 0; y < rows; {
				n := unfilterAt(raw, y, rowLen, prev, bpp)
				if n == 0 {
					t.Fatalf("row %d: unfilterAt refused a known filter", y)
				}
				y += n
				prev = raw[(y-1)*rowLen : y*rowLen]
			}
			if !bytes.Equal(raw, want) {
				t.Fatalf("bpp %d, %d pixels: rows differ from the specification's", bpp, pixels)
			}
		}
	}
}

// TestUnfilterPaethMatchesSpec unfilters random Paeth rows of every pixel
// size and of lengths around the vector loop's bounds against the PNG
// specification's predictor, byte by byte.
func TestUnfilterPaethMatchesSpec(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	for _, bpp := range []int{1, 2, 3, 4, 6, 8} {
		for pixels := range 24 {
			n := pixels * bpp
			c, p := make([]byte, n), make([]byte, n)
			for i := range c {
				c[i], p[i] = uint8(rng.IntN(256)), uint8(rng.IntN(256))
			}
			want := slices.Clone(c)
			for i := range want {
				var a, ul byte
				if i >= bpp {
					a, ul = want[i-bpp], p[i-bpp]
				}
				want[i] += paethSpec(a, p[i], ul)
			}
			unfilterPaeth(c, p, bpp)
			if !bytes.Equal(c, want) {
				t.Fatalf("bpp %d, %d pixels: got %v, want %v", bpp, pixels, c, want)
			}
		}
	}
}

// BenchmarkDecodeFillMNIST decodes and fills the first thousand MNIST
// test digits as image/png writes them, which is what the demo's pool
// holds and what the demo backbone's embedding spends most of its own CPU
// on. It is skipped where MNIST is not installed (`make setup`).
func BenchmarkDecodeFillMNIST(b *testing.B) {
	set, err := mnist.LoadTest(mnist.DefaultDir())
	if err != nil {
		b.Skip(err)
	}
	files := make([][]byte, 1000)
	for i := range files {
		var buf bytes.Buffer
		if err := png.Encode(&buf, set.Image(i)); err != nil {
			b.Fatal(err)
		}
		files[i] = buf.Bytes()
	}
	p, err := Spec{Channels: 1, Height: 28, Width: 28}.Prepare()
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]float32, p.Spec().Size())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := p.DecodeFill(dst, files[i%len(files)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// An RGB PNG's pixels, read in place by DecodeFill, are the ones Decode
// gives, through At as well.
func TestRGBRowsAreThePixels(t *testing.T) {
	m := randomImage(rand.New(rand.NewPCG(7, 8)), 9, 5, ctRGB)
	data := m.encode(t, filterCycle, 1<<15)
	want, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := withPNG(data, func(got image.Image) error {
		if _, ok := got.(*rgb); !ok {
			return fmt.Errorf("withPNG gave %T, want *rgb", got)
		}
		if got.Bounds() != want.Bounds() || got.ColorModel() != color.RGBAModel {
			return fmt.Errorf("bounds %v, model %v; want %v, RGBA", got.Bounds(), got.ColorModel(), want.Bounds())
		}
		for y := -1; y <= 5; y++ {
			for x := -1; x <= 9; x++ {
				if g, w := color.RGBAModel.Convert(got.At(x, y)), color.RGBAModel.Convert(want.At(x, y)); g != w {
					return fmt.Errorf("(%d, %d) = %v, want %v", x, y, g, w)
				}
			}
		}
		return nil
	})
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
}

// BenchmarkDecodeFillRGB256 decodes a 256×256 RGB PNG and fills an
// ImageNet-style 3×224×224 input from it, the CPU work of an image of the
// bench's embed_resnet50, which on a GPU is what bounds it.
func BenchmarkDecodeFillRGB256(b *testing.B) {
	data := stdlibPNG(b, photo(256, 256), png.DefaultCompression)
	p, err := imagenet.Prepare()
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]float32, imagenet.Size())
	b.ReportAllocs()
	for b.Loop() {
		if err := p.DecodeFill(dst, data); err != nil {
			b.Fatal(err)
		}
	}
}
