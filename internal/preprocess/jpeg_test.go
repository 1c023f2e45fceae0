package preprocess

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// checkJPEGAgrees fails if the fast path returns an image that image/jpeg
// does not return for data; took says whether it returned one.
func checkJPEGAgrees(t testing.TB, data []byte) (took bool) {
	t.Helper()
	got, ok := decodeJPEG(data)
	if !ok {
		return false
	}
	want, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		// A sequential file lacking only its end-of-image marker is the
		// fast path's to take (as libjpeg does): image/jpeg gives it with
		// the marker added.
		want, err = jpeg.Decode(bytes.NewReader(append(slices.Clone(data), 0xff, jpegEOI)))
	}
	if err != nil {
		t.Fatalf("fast path decoded a file image/jpeg rejects, with or without an EOI added: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fast path gave %T %v, image/jpeg %T %v", got, got.Bounds(), want, want.Bounds())
	}
	return true
}

// noisyPhoto is photo(w, h) with noise on top, so that its blocks have
// coefficients of every frequency, as a photograph's textures do; gray
// gives it as an *image.Gray, which image/jpeg encodes with one component.
func noisyPhoto(rng *rand.Rand, w, h int, gray bool) image.Image {
	m := photo(w, h)
	for i := range m.Pix {
		if i%4 != 3 {
			m.Pix[i] = uint8(int(m.Pix[i])/2 + rng.IntN(128))
		}
	}
	if !gray {
		return m
	}
	g := image.NewGray(m.Rect)
	for i := range g.Pix {
		g.Pix[i] = m.Pix[4*i]
	}
	return g
}

func encodeJPEG(t testing.TB, m image.Image, quality int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: quality}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodeJPEGMatchesImageJPEG decodes what image/jpeg's encoder writes
// (4:2:0 YCbCr, or gray), at every quality's extremes, of sizes that are
// and are not whole blocks and MCUs.
func TestDecodeJPEGMatchesImageJPEG(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, gray := range []bool{false, true} {
		for _, size := range append(testSizes, [2]int{17, 33}, [2]int{500, 375}) {
			m := noisyPhoto(rng, size[0], size[1], gray)
			for _, q := range []int{1, 50, 90, 100} {
				t.Run(fmt.Sprintf("gray=%v/%dx%d/q%d", gray, size[0], size[1], q), func(t *testing.T) {
					if !checkJPEGAgrees(t, encodeJPEG(t, m, q)) {
						t.Fatal("the fast path declined a file image/jpeg wrote")
					}
				})
			}
		}
	}
}

// TestDecodeJPEGTestdata decodes image/jpeg's own test files: every
// subsampling ratio, sequential and progressive, restart markers, gray
// with nominal 2×2 sampling, a progressive file whose last scans are cut,
// and what the fast path leaves to image/jpeg (CMYK, RGB).
func TestDecodeJPEGTestdata(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "image", "testdata", "*.jpeg"))
	if err != nil || len(files) < 20 {
		t.Fatalf("image/jpeg's test files in GOROOT: %d found (%v)", len(files), err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			took := checkJPEGAgrees(t, data)
			declines := false
			for _, s := range []string{"cmyk", "rgb"} {
				declines = declines || strings.Contains(name, s)
			}
			if took == declines {
				t.Fatalf("fast path took it: %v, want %v", took, !declines)
			}
		})
	}
}

// testdataJPEG reads one of image/jpeg's test files.
func testdataJPEG(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", "image", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestDecodeJPEGDamaged cuts and corrupts files, sequential and
// progressive: whatever the fast path still decodes must be what
// image/jpeg decodes, and the rest declines. Corrupted progressive scans
// reach the end-of-band runs and refinements in every odd way.
func TestDecodeJPEGDamaged(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for i, data := range [][]byte{
		encodeJPEG(t, noisyPhoto(rng, 40, 24, false), 75),
		encodeJPEG(t, noisyPhoto(rng, 19, 9, true), 30),
		testdataJPEG(t, "video-001.restart2.jpeg"),
		testdataJPEG(t, "video-001.q50.420.progressive.jpeg"),
		testdataJPEG(t, "video-001.separate.dc.progression.progressive.jpeg"),
		testdataJPEG(t, "video-005.gray.q50.progressive.jpeg"),
	} {
		// Every cut near the end, a few hundred elsewhere.
		for n := range len(data) {
			if n > len(data)-64 || n%(len(data)/300+1) == 0 {
				checkJPEGAgrees(t, data[:n])
			}
		}
		took := 0
		for range 2000 {
			b := bytes.Clone(data)
			for range 1 + rng.IntN(3) {
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			}
			if checkJPEGAgrees(t, b) {
				took++
			}
		}
		t.Logf("file %d: the fast path decoded %d of 2000 corrupted copies", i, took)
	}
}

// TestDecodeJPEGReusedPlanes decodes into planes full of an earlier
// image's pixels: a progressive image leaves some blocks unwritten (the
// padding's, and a component's without a scan), which must be image/jpeg's
// zeros.
func TestDecodeJPEGReusedPlanes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "image", "testdata", "*.jpeg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data := testdataJPEG(t, filepath.Base(f))
		want, ok := decodeJPEG(data)
		if !ok {
			continue
		}
		var d jpegDecoder
		for i := range d.planes {
			d.planes[i] = bytes.Repeat([]byte{0xaa}, 1<<18)
		}
		got, ok := d.decode(data, true)
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: into used planes, took it %v, same image %v", filepath.Base(f), ok, reflect.DeepEqual(got, want))
		}
	}
}

// A decoder keeps its Huffman tables from image to image (jpegTables),
// but a file may use only the tables it defines: one whose DHT segments
// are cut out must not decode with those of the file before, and a file
// after it with other tables must decode with its own.
func TestDecodeJPEGKeptTables(t *testing.T) {
	rng := rand.New(rand.NewPCG(37, 38))
	photo := encodeJPEG(t, noisyPhoto(rng, 160, 120, false), 90)
	var noDHT []byte // photo without its DHT segments
	for pos := 2; ; {
		marker, n := photo[pos+1], int(photo[pos+2])<<8|int(photo[pos+3])
		if marker == jpegSOS {
			noDHT = append(noDHT, photo[pos:]...)
			break
		}
		if marker != jpegDHT {
			noDHT = append(noDHT, photo[pos:pos+2+n]...)
		}
		pos += 2 + n
	}
	noDHT = append([]byte{0xff, jpegSOI}, noDHT...)
	d := new(jpegDecoder)
	for i, step := range []struct {
		data []byte
		ok   bool
	}{
		{photo, true},
		{noDHT, false},
		{jpegOf(rng, testJPEG{nComp: 3, hv: [3][2]int{{2, 2}, {1, 1}, {1, 1}}, w: 160, h: 120, order: []int{0, 1, 2}}), true},
		{photo, true},
	} {
		got, ok := d.decode(step.data, false)
		if ok != step.ok {
			t.Fatalf("file %d: fast path took it: %v, want %v", i, ok, step.ok)
		}
		if !ok {
			continue
		}
		want, err := jpeg.Decode(bytes.NewReader(step.data))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("file %d: the fast path's image is not image/jpeg's", i)
		}
	}
}

// TestDecodeJPEGAdobe gives files with Photoshop's APP14 segment, as
// many photos saved from it have: with its YCbCr transform (1) they take
// the fast path, with 0 (RGB) image/jpeg's; JFIF overrides it, as in
// image/jpeg.
func TestDecodeJPEGAdobe(t *testing.T) {
	data := encodeJPEG(t, noisyPhoto(rand.New(rand.NewPCG(37, 38)), 24, 16, false), 80)
	app14 := func(transform byte) []byte {
		return []byte{0xff, jpegAPP14, 0, 14, 'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, transform}
	}
	for _, tc := range []struct {
		name string
		file []byte
		took bool
	}{
		{"YCbCr", slices.Concat(data[:2], app14(1), data[2:]), true},
		{"RGB", slices.Concat(data[:2], app14(0), data[2:]), false},
		{"RGB, then JFIF", slices.Concat(data[:2], app14(0), []byte{0xff, jpegAPP0, 0, 7, 'J', 'F', 'I', 'F', 0}, data[2:]), true},
		// Under twelve bytes, image/jpeg ignores it.
		{"short", slices.Concat(data[:2], []byte{0xff, jpegAPP14, 0, 8, 'A', 'd', 'o', 'b', 'e', 0}, data[2:]), true},
	} {
		if took := checkJPEGAgrees(t, tc.file); took != tc.took {
			t.Errorf("%s: fast path took it: %v, want %v", tc.name, took, tc.took)
		}
	}
}

// TestDecodeJPEGHugeClaim gives a file of a few hundred bytes whose frame
// claims 8192×8192 pixels: refused before anything that size is
// allocated, as decodeStd refuses it.
func TestDecodeJPEGHugeClaim(t *testing.T) {
	data := encodeJPEG(t, noisyPhoto(rand.New(rand.NewPCG(33, 34)), 16, 16, false), 50)
	i := bytes.Index(data, []byte{0xff, jpegSOF0})
	if i < 0 {
		t.Fatal("no SOF0 in image/jpeg's file")
	}
	binary.BigEndian.PutUint16(data[i+5:], 8192) // height
	binary.BigEndian.PutUint16(data[i+7:], 8192) // width
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, ok := decodeJPEG(data)
	p, _ := Spec{Channels: 3, Height: 8, Width: 8}.Prepare()
	err := p.DecodeFill(make([]float32, 3*8*8), data)
	runtime.ReadMemStats(&after)
	if ok || err == nil || !strings.Contains(err.Error(), "claims 8192x8192 pixels") {
		t.Fatalf("fast path took it: %v; DecodeFill: %v", ok, err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("refusing it allocated %d MiB", n>>20)
	}
}

// A large photo's scans are measured before its planes are allocated
// (the fast path passes over the file for any of more than 2^16 blocks):
// a real one decodes, and its coded bytes are most of the file.
func TestDecodeJPEGLargeMeasured(t *testing.T) {
	data := encodeJPEG(t, noisyPhoto(rand.New(rand.NewPCG(35, 36)), 2100, 1600, false), 75)
	if !checkJPEGAgrees(t, data) {
		t.Fatal("the fast path declined a 2100×1600 photo")
	}
	blocks, coded := jpegBudget(data)
	if want := int64(263*200 + 2*132*100); blocks != want || coded < int64(len(data))*9/10 || coded > int64(len(data)) {
		t.Errorf("%d blocks and %d coded bytes in a file of %d, want %d blocks and most of the file", blocks, coded, len(data), want)
	}
}

// TestDecodeJPEGManyScans repeats a progressive file's first scan (its
// DCs, which a repeat sets again): up to maxJPEGScans scans decode as
// image/jpeg decodes them, more are refused by both paths with an error
// that says why.
func TestDecodeJPEGManyScans(t *testing.T) {
	data := testdataJPEG(t, "video-001.q50.420.progressive.jpeg")
	first := bytes.Index(data, []byte{0xff, jpegSOS})
	end := first + 2 + int(binary.BigEndian.Uint16(data[first+2:]))
	for data[end] != 0xff || data[end+1] == 0 || data[end+1]&0xf8 == jpegRST0 {
		end++
	}
	scans := bytes.Count(data, []byte{0xff, jpegSOS})
	p, _ := Spec{Channels: 3, Height: 8, Width: 8}.Prepare()
	for _, n := range []int{maxJPEGScans, maxJPEGScans + 1} {
		b := slices.Clone(data[:end])
		for range n - scans {
			b = append(b, data[first:end]...)
		}
		b = append(b, data[end:]...)
		_, took := decodeJPEG(b)
		err := p.DecodeFill(make([]float32, 3*8*8), b)
		if n <= maxJPEGScans && (!took || !checkJPEGAgrees(t, b) || err != nil) {
			t.Errorf("%d scans: fast path took it %v, DecodeFill: %v", n, took, err)
		}
		if n > maxJPEGScans && (took || err == nil || !strings.Contains(err.Error(), "scans")) {
			t.Errorf("%d scans: fast path took it %v, DecodeFill: %v", n, took, err)
		}
	}
}

// TestDecodeJPEGOwnsPixels checks that Decode's image is not the pool's.
func TestDecodeJPEGOwnsPixels(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	a, err := Decode(encodeJPEG(t, noisyPhoto(rng, 32, 32, false), 80))
	if err != nil {
		t.Fatal(err)
	}
	before := reflect.ValueOf(a).Elem().FieldByName("Y").Bytes()
	before = bytes.Clone(before)
	dst := make([]float32, 3*8*8)
	p, _ := Spec{Channels: 3, Height: 8, Width: 8}.Prepare()
	for range 4 {
		if err := p.DecodeFill(dst, encodeJPEG(t, noisyPhoto(rng, 32, 32, false), 80)); err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(encodeJPEG(t, noisyPhoto(rng, 32, 32, false), 80)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(before, a.(*image.YCbCr).Y) {
		t.Fatal("a later decode overwrote Decode's image")
	}
}

// TestDecodeJPEGConcurrent decodes and fills sequential and progressive
// files from several goroutines at once, through the pool's decoders and
// planes: every tensor is the one image/jpeg's image fills.
func TestDecodeJPEGConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(39, 40))
	files := [][]byte{
		encodeJPEG(t, noisyPhoto(rng, 40, 30, false), 80),
		encodeJPEG(t, noisyPhoto(rng, 33, 17, true), 60),
		testdataJPEG(t, "video-001.q50.420.progressive.jpeg"),
		testdataJPEG(t, "video-001.restart2.jpeg"),
	}
	p, err := Spec{Channels: 3, Height: 16, Width: 16}.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	want := make([][]float32, len(files))
	for i, f := range files {
		img, err := jpeg.Decode(bytes.NewReader(f))
		if err != nil {
			t.Fatal(err)
		}
		want[i] = make([]float32, 3*16*16)
		if err := p.Fill(want[i], img); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			got := make([]float32, 3*16*16)
			for k := range 50 * len(files) {
				i := (g + k) % len(files)
				if err := p.DecodeFill(got, files[i]); err != nil || !slices.Equal(got, want[i]) {
					t.Errorf("file %d: %v, or another tensor", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzDecodeJPEG(f *testing.F) {
	rng := rand.New(rand.NewPCG(27, 28))
	f.Add(encodeJPEG(f, noisyPhoto(rng, 20, 12, false), 60))
	f.Add(encodeJPEG(f, noisyPhoto(rng, 9, 9, true), 95))
	f.Add(testdataJPEG(f, "video-001.q50.420.progressive.jpeg"))
	f.Add(testdataJPEG(f, "video-001.jpeg")) // 420 blocks: paired look-ups (jpegPairBlocks)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkJPEGAgrees(t, data)
	})
}

// BenchmarkDecodeFillJPEG is a 500×375 photo at quality 90 (130 KB, about
// an ImageNet JPEG's size) into an ImageNet-style 3×224×224 input, by the
// fast path and by image/jpeg.
func BenchmarkDecodeFillJPEG(b *testing.B) {
	data := encodeJPEG(b, noisyPhoto(rand.New(rand.NewPCG(29, 30)), 500, 375, false), 90)
	p, err := imagenet.Prepare()
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]float32, imagenet.Size())
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := p.DecodeFill(dst, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("image-jpeg", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			img, err := decodeStd(data)
			if err == nil {
				err = p.Fill(dst, img)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeJPEG is the fast path's decode alone of a 500×375 photo
// at quality 75 and 95 (the Huffman loop's share grows with the quality).
func BenchmarkDecodeJPEG(b *testing.B) {
	for _, q := range []int{75, 95} {
		data := encodeJPEG(b, noisyPhoto(rand.New(rand.NewPCG(29, 30)), 500, 375, false), q)
		b.Run(fmt.Sprintf("q%d", q), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if ok, _ := withJPEG(data, func(image.Image) error { return nil }); !ok {
					b.Fatal("the fast path declined")
				}
			}
		})
	}
}

// TestIDCTStoreMatchesGo checks jpegIDCTStore (with AVX2, the vector
// transform) against jpegIDCT and jpegStore on blocks of coefficients as
// photos have them, of a few low frequencies, of every size up to where
// int32 products wrap, and at int32's extremes.
func TestIDCTStoreMatchesGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for i := range 20000 {
		var blk [64]int32
		bound := []int32{4, 64, 2048, 1 << 16, 1 << 24, math.MaxInt32}[i%6]
		for j := range blk {
			if i%3 == 0 && j > 10 {
				break
			}
			blk[j] = rng.Int32N(bound) - rng.Int32N(bound)
		}
		if i%97 == 0 {
			blk[rng.IntN(64)] = math.MinInt32
		}
		const stride = 13
		got, want := make([]byte, 8*stride), make([]byte, 8*stride)
		b := blk
		jpegIDCTStore(got, stride, &b)
		b = blk
		jpegIDCT(&b)
		jpegStore(want, stride, &b)
		if !bytes.Equal(got, want) {
			t.Fatalf("block %v:\ngot  %v\nwant %v", blk, got, want)
		}
	}
}

// TestFlatBlocksMatchIDCT checks jpegFlat against the transform of a block
// with only a DC coefficient, over every value a dequantised DC can take
// and beyond, to int32's extremes.
func TestFlatBlocksMatchIDCT(t *testing.T) {
	dcs := []int32{math.MinInt32, math.MaxInt32, -1 << 24, 1 << 24}
	for dc := int32(-70000); dc <= 70000; dc++ {
		dcs = append(dcs, dc)
	}
	got, want := make([]byte, 64), make([]byte, 64)
	for _, dc := range dcs {
		blk := [64]int32{dc}
		jpegIDCT(&blk)
		jpegStore(want, 8, &blk)
		jpegFlat(got, 8, dc)
		if !bytes.Equal(got, want) {
			t.Fatalf("DC %d: got %v, want %v", dc, got[:8], want[:8])
		}
	}
}
