package preprocess

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/image/bmp"
)

// rgba2x2 is
//
//	(10,20,30)   (40,50,60)
//	(70,80,90)   (100,110,120)
func rgba2x2() *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, 2, 2))
	m.SetRGBA(0, 0, color.RGBA{10, 20, 30, 255})
	m.SetRGBA(1, 0, color.RGBA{40, 50, 60, 255})
	m.SetRGBA(0, 1, color.RGBA{70, 80, 90, 255})
	m.SetRGBA(1, 1, color.RGBA{100, 110, 120, 255})
	return m
}

func gray(w, h int, pix ...uint8) *image.Gray {
	m := image.NewGray(image.Rect(0, 0, w, h))
	copy(m.Pix, pix)
	return m
}

func div(vs []float32, d float32) []float32 {
	out := make([]float32, len(vs))
	for i, v := range vs {
		out[i] = v / d
	}
	return out
}

func assertClose(t *testing.T, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("len = %d, want %d", len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i])-float64(want[i])) > tol {
			t.Fatalf("[%d] = %v, want %v (tol %g)\ngot  %v\nwant %v", i, got[i], want[i], tol, got, want)
		}
	}
}

func fill(t *testing.T, s Spec, img image.Image) []float32 {
	t.Helper()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, s.Size())
	for i := range dst {
		dst[i] = float32(math.NaN()) // every slot must be written
	}
	if err := s.Fill(dst, img); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestFillValues(t *testing.T) {
	nchw := []float32{10, 40, 70, 100, 20, 50, 80, 110, 30, 60, 90, 120}
	nhwc := []float32{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}
	red, green, blue := color.RGBA{255, 0, 0, 255}, color.RGBA{0, 255, 0, 255}, color.RGBA{0, 0, 255, 255}
	primaries := image.NewRGBA(image.Rect(0, 0, 2, 2))
	primaries.SetRGBA(0, 0, red)
	primaries.SetRGBA(1, 0, green)
	primaries.SetRGBA(0, 1, blue)
	primaries.SetRGBA(1, 1, color.RGBA{255, 255, 255, 255})
	g16 := image.NewGray16(image.Rect(0, 0, 3, 1))
	g16.SetGray16(0, 0, color.Gray16{Y: 257 * 100})
	g16.SetGray16(1, 0, color.Gray16{Y: 1})
	g16.SetGray16(2, 0, color.Gray16{Y: 65535})
	rgb16 := image.NewRGBA64(image.Rect(0, 0, 1, 1))
	rgb16.SetRGBA64(0, 0, color.RGBA64{1, 2, 65535, 65535})
	translucent := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	translucent.SetNRGBA(0, 0, color.NRGBA{200, 100, 50, 128})
	pal := image.NewPaletted(image.Rect(0, 0, 2, 1), color.Palette{color.RGBA{1, 2, 3, 255}, color.RGBA{250, 251, 252, 255}})
	pal.Pix[1] = 1

	tests := []struct {
		name string
		spec Spec
		img  image.Image
		want []float32
		tol  float64
	}{
		{"rgb nchw byte", Spec{Channels: 3, Height: 2, Width: 2, Scale: "byte"}, rgba2x2(), nchw, 0},
		{"rgb nhwc byte", Spec{Layout: "NHWC", Channels: 3, Height: 2, Width: 2, Scale: "byte"}, rgba2x2(), nhwc, 0},
		{"rgb nchw unit", Spec{Channels: 3, Height: 2, Width: 2}, rgba2x2(), div(nchw, 255), 1e-7},
		{"rgb nhwc unit lower-case layout", Spec{Layout: "nhwc", Channels: 3, Height: 2, Width: 2, Scale: "unit"}, rgba2x2(), div(nhwc, 255), 1e-7},
		{
			"rgb nchw byte mean std",
			Spec{Channels: 3, Height: 2, Width: 2, Scale: "byte", Mean: []float32{10, 20, 30}, Std: []float32{2, 4, 5}},
			rgba2x2(),
			[]float32{0, 15, 30, 45, 0, 7.5, 15, 22.5, 0, 6, 12, 18},
			1e-5,
		},
		{
			"rgb nhwc unit mean only",
			Spec{Layout: "NHWC", Channels: 3, Height: 2, Width: 2, Mean: []float32{0.5, 0.5, 0.5}},
			rgba2x2(),
			func() []float32 {
				out := div(nhwc, 255)
				for i := range out {
					out[i] -= 0.5
				}
				return out
			}(),
			1e-6,
		},
		// Exact: the same bits as PyTorch's u8 -> f32 / 255.
		{"gray unit fast path", Spec{Channels: 1, Height: 2, Width: 2}, gray(2, 2, 0, 64, 128, 255), []float32{0, 64.0 / 255, 128.0 / 255, 1}, 0},
		{"gray byte fast path", Spec{Channels: 1, Height: 2, Width: 2, Scale: "byte"}, gray(2, 2, 0, 64, 128, 255), []float32{0, 64, 128, 255}, 0},
		{"gray to 3 nchw", Spec{Channels: 3, Height: 2, Width: 2, Scale: "byte"}, gray(2, 2, 0, 64, 128, 255), []float32{0, 64, 128, 255, 0, 64, 128, 255, 0, 64, 128, 255}, 0},
		{"gray to 3 nhwc", Spec{Layout: "NHWC", Channels: 3, Height: 2, Width: 2, Scale: "byte"}, gray(2, 2, 0, 64, 128, 255), []float32{0, 0, 0, 64, 64, 64, 128, 128, 128, 255, 255, 255}, 0},
		{
			"gray to 3 mean std per channel",
			Spec{Channels: 3, Height: 1, Width: 2, Scale: "byte", Mean: []float32{0, 100, 200}, Std: []float32{1, 2, 5}},
			gray(2, 1, 100, 200),
			[]float32{100, 200, 0, 50, -20, 0},
			1e-5,
		},
		{
			"gray to 3 nhwc mean std",
			Spec{Layout: "NHWC", Channels: 3, Height: 1, Width: 2, Scale: "byte", Mean: []float32{0, 100, 200}, Std: []float32{1, 2, 5}},
			gray(2, 1, 100, 200),
			[]float32{100, 0, -20, 200, 50, 0},
			1e-5,
		},
		{"gray mean std fast path", Spec{Channels: 1, Height: 1, Width: 2, Mean: []float32{0.5}, Std: []float32{0.25}}, gray(2, 1, 0, 255), []float32{-2, 2}, 1e-6},
		{"rgb to luma", Spec{Channels: 1, Height: 2, Width: 2}, primaries, []float32{0.299, 0.587, 0.114, 1}, 1e-6},
		{"gray16 keeps precision", Spec{Channels: 1, Height: 1, Width: 3}, g16, []float32{100.0 / 255, 1.0 / 65535, 1}, 1e-6},
		{"gray16 byte", Spec{Channels: 1, Height: 1, Width: 3, Scale: "byte"}, g16, []float32{100, 255.0 / 65535, 255}, 1e-4},
		{"rgba64 keeps precision", Spec{Channels: 3, Height: 1, Width: 1}, rgb16, []float32{1.0 / 65535, 2.0 / 65535, 1}, 1e-9},
		{"alpha composited on black", Spec{Channels: 3, Height: 1, Width: 1, Scale: "byte"}, translucent, []float32{200 * 128.0 / 255, 100 * 128.0 / 255, 50 * 128.0 / 255}, 1e-4},
		{"paletted", Spec{Layout: "NHWC", Channels: 3, Height: 1, Width: 2, Scale: "byte"}, pal, []float32{1, 2, 3, 250, 251, 252}, 1e-4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertClose(t, fill(t, tc.spec, tc.img), tc.want, tc.tol)
		})
	}
}

// TestFillMatchesAt checks every concrete-type shortcut in convert against
// the generic At path, for sub-images whose bounds do not start at 0.
func TestFillMatchesAt(t *testing.T) {
	r := image.Rect(0, 0, 7, 5)
	fillAll := func(set func(x, y int, c color.NRGBA)) {
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				set(x, y, color.NRGBA{uint8(37 * x), uint8(53 * y), uint8(11*x + 17*y), uint8(255 - 20*x)})
			}
		}
	}
	rgba, nrgba := image.NewRGBA(r), image.NewNRGBA(r)
	rgba64, nrgba64 := image.NewRGBA64(r), image.NewNRGBA64(r)
	g, g16, cmyk := image.NewGray(r), image.NewGray16(r), image.NewCMYK(r)
	ycc := image.NewYCbCr(r, image.YCbCrSubsampleRatio420)
	nycca := image.NewNYCbCrA(r, image.YCbCrSubsampleRatio422)
	pal := image.NewPaletted(r, palette.Plan9)
	fillAll(func(x, y int, c color.NRGBA) {
		rgba.Set(x, y, c)
		nrgba.Set(x, y, c)
		rgba64.Set(x, y, c)
		nrgba64.Set(x, y, c)
		g.Set(x, y, c)
		g16.Set(x, y, c)
		cmyk.Set(x, y, c)
		pal.Set(x, y, c)
		yy, cb, cr := color.RGBToYCbCr(c.R, c.G, c.B)
		ycc.Y[ycc.YOffset(x, y)], ycc.Cb[ycc.COffset(x, y)], ycc.Cr[ycc.COffset(x, y)] = yy, cb, cr
		nycca.Y[nycca.YOffset(x, y)], nycca.Cb[nycca.COffset(x, y)], nycca.Cr[nycca.COffset(x, y)] = yy, cb, cr
		nycca.A[nycca.AOffset(x, y)] = c.A
	})
	sub := image.Rect(2, 1, 6, 4)
	imgs := map[string]image.Image{
		"rgba": rgba, "nrgba": nrgba, "rgba64": rgba64, "nrgba64": nrgba64, "gray": g, "gray16": g16,
		"cmyk": cmyk, "ycbcr": ycc, "nycbcra": nycca, "paletted": pal,
	}
	for name, img := range imgs {
		img := img.(interface {
			image.Image
			SubImage(image.Rectangle) image.Image
		}).SubImage(sub)
		for _, ch := range []int{1, 3} {
			s := Spec{Layout: "NHWC", Channels: ch, Height: sub.Dy(), Width: sub.Dx()}
			got := fill(t, s, img)
			var want []float32
			for y := sub.Min.Y; y < sub.Max.Y; y++ {
				for x := sub.Min.X; x < sub.Max.X; x++ {
					r, g, b, _ := img.At(x, y).RGBA()
					if ch == 1 {
						want = append(want, float32((0.299*float64(r)+0.587*float64(g)+0.114*float64(b))/65535))
					} else {
						want = append(want, float32(r)/65535, float32(g)/65535, float32(b)/65535)
					}
				}
			}
			// YCbCr goes through 8-bit RGB (or Y directly) rather than
			// At's 16-bit conversion, and gray sources use their Y
			// which is rounded differently; allow about one 8-bit step.
			tol := 1e-6
			switch name {
			case "ycbcr", "nycbcra", "gray", "gray16":
				tol = 1.5 / 255
			case "nrgba", "nrgba64":
				// At truncates when premultiplying; convert does not.
				tol = 2.0 / 65535
			}
			t.Run(name, func(t *testing.T) { assertClose(t, got, want, tol) })
		}
	}
}

// TestDownscaleIsBlockMean checks that an integer-factor downscale averages
// exactly the covered source pixels, however large the factor.
func TestDownscaleIsBlockMean(t *testing.T) {
	for _, f := range []int{2, 3, 7, 40} {
		const out = 5
		src := image.NewGray(image.Rect(0, 0, out*f, out*f))
		for i := range src.Pix {
			src.Pix[i] = uint8(i*7919 + i/13)
		}
		want := make([]float32, out*out)
		for y := 0; y < out; y++ {
			for x := 0; x < out; x++ {
				sum := 0
				for yy := y * f; yy < (y+1)*f; yy++ {
					for xx := x * f; xx < (x+1)*f; xx++ {
						sum += int(src.GrayAt(xx, yy).Y)
					}
				}
				want[y*out+x] = float32(sum) / float32(f*f)
			}
		}
		got := fill(t, Spec{Channels: 1, Height: out, Width: out, Scale: "byte"}, src)
		assertClose(t, got, want, 1e-3)
	}
}

func TestResize(t *testing.T) {
	// 6x2, the two leftmost columns red, the rest black.
	leftRed := image.NewRGBA(image.Rect(0, 0, 6, 2))
	for y := 0; y < 2; y++ {
		for x := 0; x < 6; x++ {
			c := color.RGBA{0, 0, 0, 255}
			if x < 2 {
				c.R = 255
			}
			leftRed.SetRGBA(x, y, c)
		}
	}
	// 2x6, the two top rows white, the rest black.
	topWhite := image.NewGray(image.Rect(0, 0, 2, 6))
	for i := 0; i < 4; i++ {
		topWhite.Pix[i] = 255
	}
	checker := image.NewGray(image.Rect(0, 0, 4, 4))
	for i := range checker.Pix {
		if (i%4+i/4)%2 == 0 {
			checker.Pix[i] = 255
		}
	}
	flat := image.NewRGBA(image.Rect(0, 0, 37, 23))
	for i := 0; i < len(flat.Pix); i += 4 {
		copy(flat.Pix[i:], []uint8{13, 200, 77, 255})
	}
	flatWant := make([]float32, 3*13*10)
	for c, v := range []float32{13, 200, 77} {
		for i := 0; i < 13*10; i++ {
			flatWant[c*130+i] = v
		}
	}

	tests := []struct {
		name string
		spec Spec
		img  image.Image
		want []float32
		tol  float64
	}{
		// Squash averages 3 source columns per output column: 2 red + 1 black.
		{"squash keeps left edge", Spec{Channels: 3, Height: 2, Width: 2, Scale: "byte"}, leftRed,
			[]float32{170, 0, 170, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 1e-3},
		// Crop keeps source columns 2 and 3 only: the red sides are gone.
		{"crop drops sides", Spec{Channels: 3, Height: 2, Width: 2, Scale: "byte", Resize: "crop"}, leftRed,
			make([]float32, 12), 0},
		{"crop drops top and bottom", Spec{Channels: 1, Height: 2, Width: 2, Scale: "byte", Resize: "crop"}, topWhite,
			make([]float32, 4), 0},
		{"squash tall", Spec{Channels: 1, Height: 2, Width: 2, Scale: "byte"}, topWhite,
			[]float32{170, 170, 0, 0}, 1e-3},
		{"crop same aspect is a scale", Spec{Channels: 1, Height: 2, Width: 2, Scale: "byte", Resize: "crop"}, checker,
			[]float32{127.5, 127.5, 127.5, 127.5}, 1e-4},
		{"downscale averages area", Spec{Channels: 1, Height: 1, Width: 1, Scale: "byte"}, checker,
			[]float32{127.5}, 1e-4},
		{"bilinear upscale", Spec{Channels: 1, Height: 1, Width: 4, Scale: "byte"}, gray(2, 1, 0, 255),
			[]float32{0, 63.75, 191.25, 255}, 1e-4},
		{"upscale 1x1", Spec{Layout: "NHWC", Channels: 3, Height: 3, Width: 2, Scale: "byte"}, gray(1, 1, 42),
			[]float32{42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42}, 0},
		{"flat stays flat", Spec{Channels: 3, Height: 13, Width: 10, Scale: "byte"}, flat, flatWant, 1e-4},
		{"gray sub-image, no resize", Spec{Channels: 1, Height: 2, Width: 1, Scale: "byte"}, checker.SubImage(image.Rect(1, 1, 2, 3)),
			[]float32{255, 0}, 0},
		{"gray sub-image, resize", Spec{Channels: 1, Height: 1, Width: 1, Scale: "byte"}, checker.SubImage(image.Rect(1, 1, 3, 2)),
			[]float32{127.5}, 1e-4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertClose(t, fill(t, tc.spec, tc.img), tc.want, tc.tol)
		})
	}
}

// Tiny WebP files (1x1 lossless VP8L and 1x1 lossy VP8) widely used for
// browser feature detection; x/image has no WebP encoder to make them here.
const (
	webpLossless = "UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA=="
	webpLossy    = "UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA"
)

func TestDecode(t *testing.T) {
	src := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	for y := 0; y < 3; y++ {
		for x := 0; x < 5; x++ {
			src.SetNRGBA(x, y, color.NRGBA{uint8(50 * x), uint8(100 * y), 128, 255})
		}
	}
	encode := func(f func(*bytes.Buffer) error) []byte {
		var buf bytes.Buffer
		if err := f(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	b64 := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name  string
		data  []byte
		w, h  int
		exact bool // lossless with a palette that holds every colour
	}{
		{"png", encode(func(b *bytes.Buffer) error { return png.Encode(b, src) }), 5, 3, true},
		{"jpeg", encode(func(b *bytes.Buffer) error { return jpeg.Encode(b, src, &jpeg.Options{Quality: 95}) }), 5, 3, false},
		{"gif", encode(func(b *bytes.Buffer) error { return gif.Encode(b, src, nil) }), 5, 3, false},
		{"bmp", encode(func(b *bytes.Buffer) error { return bmp.Encode(b, src) }), 5, 3, true},
		{"webp lossless", b64(webpLossless), 1, 1, false},
		{"webp lossy", b64(webpLossy), 1, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Decode(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Fatalf("bounds %v, want %dx%d", b, tc.w, tc.h)
			}
			s := Spec{Channels: 3, Height: tc.h, Width: tc.w, Scale: "byte"}
			got := fill(t, s, img)
			if !tc.exact {
				return
			}
			want := fill(t, s, src)
			assertClose(t, got, want, 0)
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	// A valid PNG header that claims 100000x100000 pixels.
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 1, 1))); err != nil {
		t.Fatal(err)
	}
	huge := bytes.Clone(buf.Bytes())
	binary.BigEndian.PutUint32(huge[16:], 100000) // IHDR width
	binary.BigEndian.PutUint32(huge[20:], 100000) // IHDR height
	binary.BigEndian.PutUint32(huge[29:], crc32.ChecksumIEEE(huge[12:29]))

	// Under the pixel cap, but far too few bytes for 8192×8192: an RGBA
	// PNG, and a JPEG, whose headers claim it.
	var pngBuf, jpegBuf bytes.Buffer
	if err := png.Encode(&pngBuf, image.NewNRGBA(image.Rect(0, 0, 1, 1))); err != nil {
		t.Fatal(err)
	}
	rgbaBomb := pngBuf.Bytes()
	binary.BigEndian.PutUint32(rgbaBomb[16:], 8192)
	binary.BigEndian.PutUint32(rgbaBomb[20:], 8192)
	binary.BigEndian.PutUint32(rgbaBomb[29:], crc32.ChecksumIEEE(rgbaBomb[12:29]))
	if err := jpeg.Encode(&jpegBuf, image.NewRGBA(image.Rect(0, 0, 8, 8)), nil); err != nil {
		t.Fatal(err)
	}
	jpegBomb := jpegBuf.Bytes()
	sof := bytes.Index(jpegBomb, []byte{0xff, 0xc0})
	binary.BigEndian.PutUint16(jpegBomb[sof+5:], 8192) // height
	binary.BigEndian.PutUint16(jpegBomb[sof+7:], 8192) // width

	// A progressive JPEG claiming it, padded with comments past a bound
	// on the file's size: its scans' bytes are what count.
	progBomb := testdataJPEG(t, "video-001.progressive.jpeg")
	sof2 := bytes.Index(progBomb, []byte{0xff, 0xc2})
	binary.BigEndian.PutUint16(progBomb[sof2+5:], 8192)
	binary.BigEndian.PutUint16(progBomb[sof2+7:], 8192)
	comment := append([]byte{0xff, 0xfe, 0xff, 0xff}, make([]byte, 0xffff-2)...)
	progBomb = slices.Concat(progBomb[:2], comment, comment, comment, comment, progBomb[2:])
	// A BMP header of 8192×8192 24-bit pixels, none of them there.
	bmpBomb := make([]byte, 54)
	copy(bmpBomb, "BM")
	binary.LittleEndian.PutUint32(bmpBomb[10:], 54) // pixels' offset
	binary.LittleEndian.PutUint32(bmpBomb[14:], 40) // info header
	binary.LittleEndian.PutUint32(bmpBomb[18:], 8192)
	binary.LittleEndian.PutUint32(bmpBomb[22:], 8192)
	binary.LittleEndian.PutUint16(bmpBomb[26:], 1)  // planes
	binary.LittleEndian.PutUint16(bmpBomb[28:], 24) // bits a pixel
	// A GIF whose screen and frame are 8192×8192, with a few bytes of LZW.
	gifBomb := []byte("GIF89a\x00\x20\x00\x20\x80\x00\x00\x00\x00\x00\xff\xff\xff" +
		"\x2c\x00\x00\x00\x00\x00\x20\x00\x20\x00\x02\x02\x44\x01\x00\x3b")
	// A lossless WebP of 8192×8192, its header alone.
	vp8l := []byte{0x2f, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(vp8l[1:], 8191|8191<<14)
	webpBomb := slices.Concat([]byte("RIFF\x12\x00\x00\x00WEBPVP8L\x05\x00\x00\x00"), vp8l, []byte{0})

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "preprocess: decode: empty input"},
		{"garbage", []byte("definitely not an image"), "preprocess: decode: not a JPEG, PNG, GIF, BMP or WebP image, the formats DCD decodes: image: unknown format"},
		{"tiff", []byte("II*\x00\x08\x00\x00\x00"), "not a JPEG, PNG, GIF, BMP or WebP image"},
		{"truncated png", buf.Bytes()[:40], "preprocess: decode"},
		{"decompression bomb", huge, "more than"},
		{"rgba png bomb", rgbaBomb, "claims 8192x8192"},
		{"jpeg bomb", jpegBomb, "claims 8192x8192"},
		{"padded progressive jpeg bomb", progBomb, "claims 8192x8192"},
		{"bmp bomb", bmpBomb, "claims 8192x8192"},
		{"gif bomb", gifBomb, "claims 8192x8192"},
		{"webp bomb", webpBomb, "more than 16777216 pixels"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			img, err := Decode(tc.data)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatalf("got %T, want error", img)
			}
			if !strings.HasPrefix(err.Error(), "preprocess: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
				t.Errorf("refusing it allocated %d MiB", n>>20)
			}
		})
	}
	if _, err := Decode([]byte("garbage")); !strings.Contains(err.Error(), "unknown format") {
		t.Fatalf("garbage: %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := Spec{Channels: 3, Height: 224, Width: 224}
	with := func(f func(*Spec)) Spec {
		s := ok
		f(&s)
		return s
	}
	tests := []struct {
		name string
		spec Spec
		want string // "" means valid
	}{
		{"defaults", ok, ""},
		{"full", Spec{Layout: "NHWC", Channels: 1, Height: 28, Width: 28, Resize: "crop", Scale: "byte", Mean: []float32{33}, Std: []float32{78}}, ""},
		{"case and space", with(func(s *Spec) { s.Layout, s.Resize, s.Scale = " nhwc", "Crop", "BYTE " }), ""},
		{"zero", Spec{}, "channels must be 1 or 3, got 0"},
		{"layout", with(func(s *Spec) { s.Layout = "CHW" }), `layout must be NCHW or NHWC, got "CHW"`},
		{"channels", with(func(s *Spec) { s.Channels = 4 }), "channels must be 1 or 3, got 4"},
		{"height", with(func(s *Spec) { s.Height = 0 }), "height must be"},
		{"width", with(func(s *Spec) { s.Width = -1 }), "width must be"},
		{"width too big", with(func(s *Spec) { s.Width = 1 << 20 }), "width must be"},
		{"a typo of a size", with(func(s *Spec) { s.Height, s.Width = 16000, 16000 }), "height × width must be at most"},
		{"resize", with(func(s *Spec) { s.Resize = "fit" }), `resize must be squash or crop, got "fit"`},
		{"scale", with(func(s *Spec) { s.Scale = "float" }), `scale must be unit or byte, got "float"`},
		{"mean length", with(func(s *Spec) { s.Mean = []float32{1} }), "mean must have 3 entries"},
		{"mean nan", with(func(s *Spec) { s.Mean = []float32{0, float32(math.NaN()), 0} }), "mean[1] must be finite"},
		{"std length", with(func(s *Spec) { s.Std = []float32{1, 1, 1, 1} }), "std must have 3 entries"},
		{"std zero", with(func(s *Spec) { s.Std = []float32{1, 0, 1} }), "std[1] must be finite and > 0"},
		{"std negative", with(func(s *Spec) { s.Std = []float32{1, 1, -2} }), "std[2]"},
		{"std nan", with(func(s *Spec) { s.Std = []float32{float32(math.NaN()), 1, 1} }), "std[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("no error, want %q", tc.want)
			case !strings.HasPrefix(err.Error(), "preprocess: ") || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWithDefaultsAndSize(t *testing.T) {
	s := Spec{Channels: 3, Height: 2, Width: 5}.WithDefaults()
	if s.Layout != "NCHW" || s.Resize != "squash" || s.Scale != "unit" {
		t.Fatalf("defaults: %+v", s)
	}
	if s.Size() != 30 {
		t.Fatalf("Size = %d, want 30", s.Size())
	}
	if n := (Spec{Channels: 3, Height: -1, Width: 5}).Size(); n != 0 {
		t.Fatalf("Size of invalid spec = %d, want 0", n)
	}
}

func TestFillErrors(t *testing.T) {
	s := Spec{Channels: 1, Height: 2, Width: 2}
	tests := []struct {
		name string
		spec Spec
		dst  []float32
		img  image.Image
		want string
	}{
		{"invalid spec", Spec{Channels: 2, Height: 2, Width: 2}, make([]float32, 8), gray(2, 2), "channels must be"},
		{"short dst", s, make([]float32, 3), gray(2, 2), "dst has 3 values, spec needs 4"},
		{"nil image", s, make([]float32, 4), nil, "image is nil"},
		{"empty image", s, make([]float32, 4), image.NewGray(image.Rect(0, 0, 0, 5)), "image is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Fill(tc.dst, tc.img)
			if err == nil || !strings.HasPrefix(err.Error(), "preprocess: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestFillGrayFastPathDoesNotAllocate(t *testing.T) {
	s := Spec{Channels: 1, Height: 28, Width: 28}
	img := image.NewGray(image.Rect(0, 0, 28, 28))
	dst := make([]float32, s.Size())
	if n := testing.AllocsPerRun(100, func() {
		if err := s.Fill(dst, img); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per Fill, want 0", n)
	}
}

func TestFillConcurrent(t *testing.T) {
	s := Spec{Channels: 3, Height: 16, Width: 16, Resize: "crop"}
	imgs := []image.Image{photo(40, 30), photo(9, 70), gray(3, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9)}
	want := make([][]float32, len(imgs))
	for i, img := range imgs {
		want[i] = fill(t, s, img)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]float32, s.Size())
			for k := 0; k < 50; k++ {
				i := (g + k) % len(imgs)
				if err := s.Fill(dst, imgs[i]); err != nil {
					t.Error(err)
					return
				}
				for j := range dst {
					if dst[j] != want[i][j] {
						t.Errorf("image %d: [%d] = %v, want %v", i, j, dst[j], want[i][j])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// photo returns a w x h opaque RGBA image with smooth gradients, standing in
// for a decoded photo.
func photo(w, h int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			i := m.PixOffset(x, y)
			m.Pix[i], m.Pix[i+1], m.Pix[i+2], m.Pix[i+3] = uint8(x*255/w), uint8(y*255/h), uint8((x+y)%256), 255
		}
	}
	return m
}

func BenchmarkFillGray28(b *testing.B) {
	s := Spec{Channels: 1, Height: 28, Width: 28}
	img := image.NewGray(image.Rect(0, 0, 28, 28))
	for i := range img.Pix {
		img.Pix[i] = uint8(i)
	}
	dst := make([]float32, s.Size())
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Fill(dst, img); err != nil {
			b.Fatal(err)
		}
	}
}

var imagenet = Spec{
	Channels: 3, Height: 224, Width: 224, Resize: "crop",
	Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225},
}

// BenchmarkFillRGB224 is a JPEG-sized photo (500x375) into an ImageNet-style
// 3x224x224 input.
func BenchmarkFillRGB224(b *testing.B) {
	img := photo(500, 375)
	dst := make([]float32, imagenet.Size())
	b.ReportAllocs()
	for b.Loop() {
		if err := imagenet.Fill(dst, img); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFillRGB224YCbCr is the same with the 4:2:0 YCbCr image that
// image/jpeg actually returns, with each interpolation (torchvision's
// ImageNet evaluation: shorter 256, PIL's bilinear; DINOv2's, bicubic).
func BenchmarkFillRGB224YCbCr(b *testing.B) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, photo(500, 375), nil); err != nil {
		b.Fatal(err)
	}
	img, err := Decode(buf.Bytes())
	if err != nil {
		b.Fatal(err)
	}
	if _, ok := img.(*image.YCbCr); !ok {
		b.Fatalf("decoded %T, want *image.YCbCr", img)
	}
	for _, c := range []struct {
		name, interpolation string
		shorter             int
	}{{"area", "", 0}, {"bilinear256", InterpolationBilinear, 256}, {"bicubic256", InterpolationBicubic, 256}} {
		b.Run(c.name, func(b *testing.B) {
			spec := imagenet
			spec.Interpolation, spec.Shorter = c.interpolation, c.shorter
			p, err := spec.Prepare()
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]float32, spec.Size())
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Fill(dst, img); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// shorter is torchvision's Resize(shorter) then CenterCrop: the shorter
// side resized to shorter, the centre cut from it (ImageNet's 256 → 224).
func TestShorterThenCrop(t *testing.T) {
	// 32×16, every pixel distinct; resized to 16×8 (2×2 boxes) and cropped
	// to 4×4 from column round((16-4)/2) = 6, row round((8-4)/2) = 2: the
	// source's columns 12..19 and rows 4..11.
	src := image.NewGray(image.Rect(0, 0, 32, 16))
	for i := range src.Pix {
		src.Pix[i] = uint8(i*37 + i/7)
	}
	want := make([]float32, 16)
	for y := range 4 {
		for x := range 4 {
			sum := 0
			for yy := 4 + 2*y; yy < 6+2*y; yy++ {
				for xx := 12 + 2*x; xx < 14+2*x; xx++ {
					sum += int(src.GrayAt(xx, yy).Y)
				}
			}
			want[y*4+x] = float32(sum) / 4
		}
	}
	assertClose(t, fill(t, Spec{Channels: 1, Height: 4, Width: 4, Scale: "byte", Resize: "crop", Shorter: 8}, src), want, 1e-3)
	// At its own size (an 8×8 image, shorter 8), the crop is the centre's
	// pixels exactly, not the whole image.
	sq := image.NewGray(image.Rect(0, 0, 8, 8))
	for i := range sq.Pix {
		sq.Pix[i] = uint8(i)
	}
	var centre []float32
	for y := 2; y < 6; y++ {
		for x := 2; x < 6; x++ {
			centre = append(centre, float32(sq.GrayAt(x, y).Y))
		}
	}
	assertClose(t, fill(t, Spec{Channels: 1, Height: 4, Width: 4, Scale: "byte", Resize: "crop", Shorter: 8}, sq), centre, 0)
	// The crop's first pixel rounds as Python does, halves to even:
	// (17-4)/2 = 6.5 gives 6, (19-4)/2 = 7.5 gives 8.
	for _, c := range []struct{ n, start int }{{17, 6}, {19, 8}} {
		if start, length := cropAxis(c.n, 8, 8, 4); start != float64(c.start) || length != 4 {
			t.Errorf("cropAxis(%d, 8, 8, 4) = %v, %v; want %d, 4", c.n, start, length, c.start)
		}
	}
	if err := (Spec{Channels: 1, Height: 4, Width: 4, Shorter: 8}).Validate(); err == nil {
		t.Error("shorter with resize squash: no error")
	}
	if err := (Spec{Channels: 1, Height: 4, Width: 6, Resize: ResizeCrop, Shorter: 5}).Validate(); err == nil {
		t.Error("shorter under the crop's width: no error")
	}
}

// A BGR model gets blue first, and its mean and std are in its order. A
// gray model has no order: "bgr" there leaves the spec as it was.
func TestBGROrder(t *testing.T) {
	if gray := (Spec{Channels: 1, Order: "BGR"}).WithDefaults(); gray.Order != "" {
		t.Errorf("a gray spec keeps order %q", gray.Order)
	}
	img := image.NewRGBA(image.Rect(0, 0, 2, 1))
	for i := 0; i < len(img.Pix); i += 4 {
		copy(img.Pix[i:], []uint8{10, 20, 30, 255})
	}
	mean, std := []float32{3, 2, 1}, []float32{1, 2, 4} // blue's, green's, red's
	for _, layout := range []string{"NCHW", "NHWC"} {
		got := fill(t, Spec{Layout: layout, Channels: 3, Height: 1, Width: 2, Scale: "byte", Order: "BGR", Mean: mean, Std: std}, img)
		want := []float32{27, 27, 9, 9, 2.25, 2.25} // (30-3)/1, (20-2)/2, (10-1)/4 a pixel
		if layout == "NHWC" {
			want = []float32{27, 9, 2.25, 27, 9, 2.25}
		}
		assertClose(t, got, want, 1e-5)
	}
}

// A mean in bytes with pixels scaled to [0,1] is refused, not a model fed
// inputs near -500.
func TestMeanInTheScaleUnit(t *testing.T) {
	s := Spec{Channels: 3, Height: 2, Width: 2, Mean: []float32{123.675, 116.28, 103.53}, Std: []float32{58.395, 57.12, 57.375}}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "mean[0]") {
		t.Errorf("ImageNet's byte mean with scale unit: %v, want an error naming mean[0]", err)
	}
	s.Scale = ScaleByte
	if err := s.Validate(); err != nil {
		t.Errorf("with scale byte: %v", err)
	}
}

// alpha ignore reads a transparent pixel as the colour stored under it,
// as PIL's convert("RGB") does; by default it is composited onto black.
// So for every image type that holds alpha.
func TestAlphaIgnore(t *testing.T) {
	nrgba := image.NewNRGBA(image.Rect(0, 0, 2, 1))
	copy(nrgba.Pix, []uint8{200, 100, 50, 0, 200, 100, 50, 255})
	nrgba64 := image.NewNRGBA64(image.Rect(0, 0, 2, 1))
	nrgba64.SetNRGBA64(0, 0, color.NRGBA64{200 * 257, 100 * 257, 50 * 257, 0})
	nrgba64.SetNRGBA64(1, 0, color.NRGBA64{200 * 257, 100 * 257, 50 * 257, 65535})
	pal := image.NewPaletted(image.Rect(0, 0, 2, 1), color.Palette{color.NRGBA{200, 100, 50, 0}, color.NRGBA{200, 100, 50, 255}})
	pal.Pix[1] = 1
	rgba := image.NewRGBA(image.Rect(0, 0, 2, 1)) // premultiplied: half-transparent 200,100,50 is 100,50,25
	copy(rgba.Pix, []uint8{100, 50, 25, 128, 200, 100, 50, 255})
	ycbcra := image.NewNYCbCrA(image.Rect(0, 0, 2, 1), image.YCbCrSubsampleRatio444)
	yy, cb, cr := color.RGBToYCbCr(200, 100, 50)
	for i := range 2 {
		ycbcra.Y[i], ycbcra.Cb[i], ycbcra.Cr[i] = yy, cb, cr
	}
	ycbcra.A[1] = 255
	yr, yg, yb := color.YCbCrToRGB(yy, cb, cr)
	for _, c := range []struct {
		name          string
		img           image.Image
		ignore, black []float32 // the first pixel's R, G, B
	}{
		{"NRGBA", nrgba, []float32{200, 100, 50}, []float32{0, 0, 0}},
		{"NRGBA64", nrgba64, []float32{200, 100, 50}, []float32{0, 0, 0}},
		{"Paletted", pal, []float32{200, 100, 50}, []float32{0, 0, 0}},
		{"RGBA", rgba, []float32{199.2, 99.6, 49.8}, []float32{100, 50, 25}},
		{"NYCbCrA", ycbcra, []float32{float32(yr), float32(yg), float32(yb)}, []float32{0, 0, 0}},
	} {
		for _, alpha := range []string{"ignore", ""} {
			got := fill(t, Spec{Layout: "NHWC", Channels: 3, Height: 1, Width: 2, Scale: "byte", Alpha: alpha}, c.img)
			want := c.black
			if alpha == "ignore" {
				want = c.ignore
			}
			if math.Abs(float64(got[0]-want[0])) > 0.5 || math.Abs(float64(got[1]-want[1])) > 0.5 || math.Abs(float64(got[2]-want[2])) > 0.5 {
				t.Errorf("%s, alpha %q: the transparent pixel is %v, want %v", c.name, alpha, got[:3], want)
			}
		}
	}
	// Premultiplied rows, opaque and not, in one image: one unit.
	col := image.NewRGBA(image.Rect(0, 0, 1, 2))
	copy(col.Pix, []uint8{200, 100, 50, 255, 100, 50, 25, 128})
	got := fill(t, Spec{Layout: "NHWC", Channels: 3, Height: 2, Width: 1, Scale: "byte", Alpha: "ignore"}, col)
	assertClose(t, got, []float32{200, 100, 50, 100 * 255 / 128.0, 50 * 255 / 128.0, 25 * 255 / 128.0}, 0.01)
	// Through the decoders of a PNG file, RGBA and paletted with tRNS.
	for _, img := range []image.Image{nrgba, pal} {
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		p, err := Spec{Layout: "NHWC", Channels: 3, Height: 1, Width: 2, Scale: "byte", Alpha: "ignore"}.Prepare()
		if err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 6)
		if err := p.DecodeFill(got, buf.Bytes()); err != nil || got[0] != 200 || got[1] != 100 || got[2] != 50 {
			t.Errorf("a %T as PNG, alpha ignore: %v, %v; want 200, 100, 50 first", img, got, err)
		}
	}
}

// interpolation bilinear and bicubic are PIL's, as torchvision's Resize of
// a PIL image uses them: shrinking, growing (bicubic overshooting this
// sharp a pattern), and Resize(shorter) then CenterCrop, within a level of
// PIL's bytes (its fixed-point sums round a half now and then the other
// way). testdata/pil_resize.py made the expected pixels.
func TestPILResize(t *testing.T) {
	data, err := os.ReadFile("testdata/pil_resize.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Interpolation string
		Src, Size     [2]int
		Shorter       int
		Pixels        []float32
	}
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		src := image.NewGray(image.Rect(0, 0, c.Src[0], c.Src[1]))
		for y := range c.Src[1] {
			for x := range c.Src[0] {
				src.Pix[y*src.Stride+x] = uint8((x*37 + y*91 + (x*y)%13) % 256)
			}
		}
		spec := Spec{Channels: 1, Width: c.Size[0], Height: c.Size[1], Scale: "byte", Interpolation: c.Interpolation}
		if c.Shorter > 0 {
			spec.Resize, spec.Shorter = ResizeCrop, c.Shorter
		}
		got := fill(t, spec, src)
		worst := 0.0
		for i := range got {
			worst = max(worst, math.Abs(float64(got[i]-c.Pixels[i])))
		}
		if worst > 1 {
			t.Errorf("%s %v to %v (shorter %d): %v off PIL's %v, at worst %.2f levels", c.Interpolation, c.Src, c.Size, c.Shorter, got, c.Pixels, worst)
		}
	}
}

// asBytes clips to the bytes' range and rounds to whole levels, as PIL's
// passes end; in 16-bit units it only clips.
func TestAsBytes(t *testing.T) {
	v := []float32{1.4, 1.6, 254.7, -3, 300, 17}
	asBytes(v, 255)
	if want := []float32{1, 2, 255, 0, 255, 17}; !slices.Equal(v, want) {
		t.Errorf("8-bit: %v, want %v", v, want)
	}
	v = []float32{1.4, -3, 70000}
	asBytes(v, 65535)
	if want := []float32{1.4, 0, 65535}; !slices.Equal(v, want) {
		t.Errorf("16-bit: %v, want %v", v, want)
	}
}

// A lossy WebP decodes to the colours libwebp (and so PIL) gives: VP8's
// video-range planes widened, not read as full range (washed out: black
// at 16, white at 235). The fixture is golang.org/x/image's testdata,
// with the PNG it was encoded from.
func TestWebPLossyFullRange(t *testing.T) {
	lossy, err := os.ReadFile("testdata/blue-purple-pink.lossy.webp")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile("testdata/blue-purple-pink.png")
	if err != nil {
		t.Fatal(err)
	}
	a, err := Decode(lossy)
	if err != nil {
		t.Fatal(err)
	}
	b, err := png.Decode(bytes.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	var bias float64
	n := 0
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			bias += float64(int(r1>>8)-int(r2>>8)+int(g1>>8)-int(g2>>8)+int(b1>>8)-int(b2>>8)) / 3
			n++
		}
	}
	if bias /= float64(n); math.Abs(bias) > 1 {
		t.Errorf("the lossy WebP is %.2f levels off its original on average, want within 1 (compression's noise, not a range)", bias)
	}
}

// A 32-bit BI_RGB BMP with a V4 header whose fourth bytes are all 0 (the
// padding writers leave) is the picture, opaque, as PIL's BGRX reading
// gives it; one with some alpha keeps its alpha.
func TestBMPPaddingIsNotAlpha(t *testing.T) {
	bmpV4 := func(px ...byte) []byte { // one row of len(px)/4 BGRA pixels
		w := len(px) / 4
		b := make([]byte, 14+108)
		copy(b, "BM")
		binary.LittleEndian.PutUint32(b[2:], uint32(len(b)+len(px)))
		binary.LittleEndian.PutUint32(b[10:], uint32(len(b)))
		binary.LittleEndian.PutUint32(b[14:], 108)
		binary.LittleEndian.PutUint32(b[18:], uint32(w))
		binary.LittleEndian.PutUint32(b[22:], 1)
		binary.LittleEndian.PutUint16(b[26:], 1)
		binary.LittleEndian.PutUint16(b[28:], 32)
		binary.LittleEndian.PutUint32(b[34:], uint32(len(px)))
		return append(b, px...)
	}
	img, err := Decode(bmpV4(0, 0, 200, 0, 10, 20, 30, 0)) // red, then a dark blue-green
	if err != nil {
		t.Fatal(err)
	}
	if r, _, _, a := img.At(0, 0).RGBA(); r>>8 != 200 || a>>8 != 255 {
		t.Errorf("padding read as alpha: pixel 0 is %v, want opaque red", img.At(0, 0))
	}
	img, err = Decode(bmpV4(0, 0, 200, 128, 10, 20, 30, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, a := img.At(1, 0).RGBA(); a != 0 {
		t.Errorf("a BMP with alpha lost it: pixel 1 has alpha %d, want 0", a>>8)
	}
}

// A baseline JPEG cut just before its end-of-image marker decodes as the
// whole file does (libjpeg, and so PIL, only warn); cut inside its scan,
// it is still refused.
func TestJPEGWithoutEOI(t *testing.T) {
	src := image.NewRGBA(image.Rect(0, 0, 32, 24))
	for i := range src.Pix {
		src.Pix[i] = uint8(i * 7)
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	whole := buf.Bytes()
	want, err := Decode(whole)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(whole[:len(whole)-2])
	if err != nil {
		t.Fatalf("a JPEG without its EOI: %v", err)
	}
	if got.At(5, 5) != want.At(5, 5) || got.At(31, 23) != want.At(31, 23) {
		t.Errorf("a JPEG without its EOI decodes otherwise: %v %v, want %v %v", got.At(5, 5), got.At(31, 23), want.At(5, 5), want.At(31, 23))
	}
	if _, err := Decode(whole[:len(whole)-40]); err == nil {
		t.Error("a JPEG cut inside its scan decoded")
	}
}

// A 16-bit colour PNG is 8 bytes a pixel decoded: one past 2^25 pixels is
// refused from its header, not given 512 MiB a decoder.
func TestPNG16Bounded(t *testing.T) {
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], 6000)
	binary.BigEndian.PutUint32(ihdr[4:], 6000)
	ihdr[8], ihdr[9] = 16, 2 // 16-bit RGB
	chunk := func(typ string, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
		b = append(append(b, typ...), body...)
		return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(append([]byte(typ), body...)))
	}
	data := append([]byte("\x89PNG\r\n\x1a\n"), chunk("IHDR", ihdr)...)
	data = append(data, chunk("IDAT", make([]byte, 300_000))...) // enough for its rows' least bytes
	if _, err := Decode(data); err == nil || !strings.Contains(err.Error(), "16-bit png image with colour or transparency is 6000x6000") {
		t.Errorf("a 16-bit 6000×6000 PNG: %v, want it refused from its header", err)
	}
	// Gray with alpha, and gray with a tRNS chunk, decode at 8 bytes a
	// pixel too; plain 16-bit gray, at 2, is not bounded so.
	for _, c := range []struct {
		name  string
		ct    byte
		trns  bool
		wants bool
	}{{"gray+alpha", 4, false, true}, {"gray with tRNS", 0, true, true}, {"gray", 0, false, false}} {
		ihdr[9] = c.ct
		data := append([]byte("\x89PNG\r\n\x1a\n"), chunk("IHDR", ihdr)...)
		if c.trns {
			data = append(data, chunk("tRNS", []byte{0, 0})...)
		}
		data = append(data, chunk("IDAT", make([]byte, 300_000))...)
		_, err := Decode(data)
		if refused := err != nil && strings.Contains(err.Error(), "16-bit png image with colour or transparency"); refused != c.wants {
			t.Errorf("a 16-bit 6000×6000 %s PNG: %v, want refused %v", c.name, err, c.wants)
		}
	}
}

// An image with a side past maxDecodeSide is refused from its header,
// however few pixels it has: the resize's buffers grow with a side.
func TestLongSideBounded(t *testing.T) {
	img := image.NewGray(image.Rect(0, 0, maxDecodeSide+1, 1))
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(buf.Bytes()); err == nil || !strings.Contains(err.Error(), "a side longer than 65535") {
		t.Errorf("a %d×1 PNG: %v, want it refused", maxDecodeSide+1, err)
	}
	img = image.NewGray(image.Rect(0, 0, maxDecodeSide, 1))
	buf.Reset()
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(buf.Bytes()); err != nil {
		t.Errorf("a %d×1 PNG: %v", maxDecodeSide, err)
	}
}
