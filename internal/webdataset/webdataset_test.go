package webdataset

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ent is one tar entry to write.
type ent struct {
	name string
	data string
	typ  byte // tar.TypeReg when zero
	link string
}

func file(name, data string) ent { return ent{name: name, data: data} }

// mkTar writes entries in format (tar.FormatUnknown lets archive/tar choose).
func mkTar(t testing.TB, format tar.Format, entries ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: 0o644, Format: format,
			ModTime: time.Unix(1700000000, 0)}
		if typ == tar.TypeXGlobalHeader {
			h = &tar.Header{Typeflag: typ, PAXRecords: map[string]string{"comment": e.data}, Format: format}
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("header %q: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func walkAll(data []byte, archive string) ([]Sample, error) {
	var got []Sample
	err := Walk(bytes.NewReader(data), archive, func(s Sample) error {
		got = append(got, s)
		return nil
	})
	return got, err
}

// blob returns n pseudo-random bytes, different for each seed.
func blob(seed int64, n int) string {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return string(b)
}

// want is a sample Walk should report.
type want struct {
	key, image, label, domain string
}

// checkSamples checks got against want, and that each image's range of the
// tar holds exactly the content written for it.
func checkSamples(t *testing.T, tarData []byte, archive string, got []Sample, wants []want, contents map[string]string) {
	t.Helper()
	if len(got) != len(wants) {
		var keys []string
		for _, s := range got {
			keys = append(keys, s.Key)
		}
		t.Fatalf("got %d samples %q, want %d", len(got), keys, len(wants))
	}
	for i, w := range wants {
		s := got[i]
		if s.Key != w.key || s.Image.Name != w.image || s.Label != w.label || s.Domain != w.domain || s.Image.Archive != archive {
			t.Errorf("sample %d = {%q %q %q %q %q}, want {%q %q %q %q %q}", i,
				s.Key, s.Image.Archive, s.Image.Name, s.Label, s.Domain, w.key, archive, w.image, w.label, w.domain)
			continue
		}
		content := contents[w.image]
		if s.Image.Size != int64(len(content)) {
			t.Errorf("%s: size %d, want %d", w.image, s.Image.Size, len(content))
			continue
		}
		end := s.Image.Offset + s.Image.Size
		if s.Image.Offset < 0 || end > int64(len(tarData)) {
			t.Errorf("%s: range [%d,%d) outside the %d-byte tar", w.image, s.Image.Offset, end, len(tarData))
			continue
		}
		if string(tarData[s.Image.Offset:end]) != content {
			t.Errorf("%s: tar bytes at [%d,%d) are not the member's content", w.image, s.Image.Offset, end)
		}
		if m, ok := ParseKey(s.Image.Key()); !ok || m != s.Image {
			t.Errorf("%s: ParseKey(%q) = %+v, %v", w.image, s.Image.Key(), m, ok)
		}
	}
}

func TestWalkFormats(t *testing.T) {
	const archive = "s3://bucket/pool/00000.tar?region=eu-west-1"
	longDir := strings.Repeat("deep-directory/", 9) // 135 bytes: needs PAX or GNU long names
	longName := longDir + strings.Repeat("x", 120) + ".png"
	basic := []ent{
		{name: "n01/", typ: tar.TypeDir},
		file("n01/000001.jpg", blob(1, 700)),
		file("n01/000001.cls", "  tench\n"),
		file("n01/000001.json", `{"w":1}`),
		file("n01/._000002.jpg", "AppleDouble"), // dot file: ignored
		file("n01/000002.PNG", blob(2, 512)),    // exactly one block: no padding
		file("n01/000002.cls", "goldfish"),
		file("n01/000002.domain", " sketch \n"),
		file("n01/000003.cls", "7"), // no image: skipped
		file("n01/000003.json", "{}"),
		file("n01/000004.jpg", blob(4, 513)),
		file("n01/000004.seg.png", blob(40, 99)), // not an image: "seg.png"
		file("n01/000004.cls", "4"),
		file("x@1+2/000005.webp", blob(5, 3<<20)), // larger than Walk's buffer
		file("x@1+2/000005.cls", "5"),
		file("README", "not a sample"),
		file("000006.gif", ""), // empty image
		file("000006.cls", "6"),
		file("./000007.jpeg", blob(7, 10)),
		file("./000007.cls", "seven"),
		file("000008.bmp", blob(8, 1000)),
		file("000008.txt", "caption"),
		file("000008.CLS", "8"),
		// A hard link (GNU tar's for a file met before): the bytes are
		// the target's. data is what the link reads, not what it holds.
		{name: "n01/000009.jpg", typ: tar.TypeLink, link: "n01/000001.jpg", data: blob(1, 700)},
		file("n01/000009.cls", "tench"),
		// No label, as a manifest row may have none: still a sample.
		file("n01/000010.png", blob(13, 64)),
		file("n01/000010.json", "{}"),
		file("n01/000011.png", blob(14, 64)),
		file("n01/000011.cls", " \n"),
		// A format DCD does not decode is an image all the same, for
		// embedding to reject; JPEG's .jfif is one it does.
		file("n01/000012.TIFF", blob(15, 64)),
		file("n01/000012.cls", "12"),
		file("n01/000013.jfif", blob(16, 64)),
		file("n01/000013.cls", "13"),
		// Beside one DCD decodes, in either order, an image it does not
		// is a companion (a multispectral TIFF, a depth map), not a
		// second image.
		file("n01/000014.jpg", blob(17, 64)),
		file("n01/000014.tif", blob(18, 64)),
		file("n01/000015.pgm", blob(19, 64)),
		file("n01/000015.png", blob(20, 64)),
	}
	basicWant := []want{
		{"n01/000001", "n01/000001.jpg", "tench", ""},
		{"n01/000002", "n01/000002.PNG", "goldfish", "sketch"},
		{"n01/000004", "n01/000004.jpg", "4", ""},
		{"x@1+2/000005", "x@1+2/000005.webp", "5", ""},
		{"000006", "000006.gif", "6", ""},
		{"./000007", "./000007.jpeg", "seven", ""},
		{"000008", "000008.bmp", "8", ""},
		{"n01/000009", "n01/000009.jpg", "tench", ""},
		{"n01/000010", "n01/000010.png", "", ""},
		{"n01/000011", "n01/000011.png", "", ""},
		{"n01/000012", "n01/000012.TIFF", "12", ""},
		{"n01/000013", "n01/000013.jfif", "13", ""},
		{"n01/000014", "n01/000014.jpg", "", ""},
		{"n01/000015", "n01/000015.png", "", ""},
	}
	long := []ent{
		file(longName, blob(10, 2000)),
		file(longDir+strings.Repeat("x", 120)+".cls", "long"),
		file("ñandú/画像-0001.JPG", blob(11, 1500)),
		file("ñandú/画像-0001.cls", "ñandú"),
		file("ñandú/画像-0001.domain", "ドメイン"),
		file(longDir+"ünï/"+strings.Repeat("é", 60)+".webp", blob(12, 4096)),
		file(longDir+"ünï/"+strings.Repeat("é", 60)+".cls", "3"),
	}
	longWant := []want{
		{longDir + strings.Repeat("x", 120), longName, "long", ""},
		{"ñandú/画像-0001", "ñandú/画像-0001.JPG", "ñandú", "ドメイン"},
		{longDir + "ünï/" + strings.Repeat("é", 60), longDir + "ünï/" + strings.Repeat("é", 60) + ".webp", "3", ""},
	}
	global := ent{typ: tar.TypeXGlobalHeader, data: "made by a test"}

	cases := []struct {
		name    string
		format  tar.Format
		entries []ent
		wants   []want
		marker  string // bytes the archive must hold, proving the format path is exercised
	}{
		{"USTAR", tar.FormatUSTAR, basic, basicWant, "ustar\x0000"},
		{"PAX", tar.FormatPAX, append(append([]ent{global}, basic...), long...), append(basicWant, longWant...), "PaxHeaders"},
		{"GNU", tar.FormatGNU, append(append([]ent{}, basic...), long...), append(basicWant, longWant...), "././@LongLink"},
		{"chosen", tar.FormatUnknown, append(append([]ent{}, long...), basic...), append(longWant, basicWant...), "PaxHeaders"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := mkTar(t, c.format, c.entries...)
			if !bytes.Contains(data, []byte(c.marker)) {
				t.Fatalf("archive lacks %q; the test does not exercise %s", c.marker, c.name)
			}
			contents := map[string]string{}
			for _, e := range c.entries {
				contents[e.name] = e.data
			}
			got, err := walkAll(data, archive)
			if err != nil {
				t.Fatal(err)
			}
			checkSamples(t, data, archive, got, c.wants, contents)
		})
	}
}

// gnuTar returns the path of GNU tar, or skips the test.
func gnuTar(t *testing.T) string {
	t.Helper()
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar binary")
	}
	if out, err := exec.Command(tarBin, "--version").Output(); err != nil || !bytes.Contains(out, []byte("GNU tar")) {
		t.Skip("tar is not GNU tar")
	}
	return tarBin
}

// TestWalkGNUTar walks archives made by GNU tar itself, when it is installed.
func TestWalkGNUTar(t *testing.T) {
	tarBin := gnuTar(t)
	dir := t.TempDir()
	longDir := strings.Repeat("a-rather-long-directory-name/", 5)
	files := []struct{ name, data string }{
		{"n01/000001.jpg", blob(21, 5000)},
		{"n01/000001.cls", "1\n"},
		{longDir + "000002.png", blob(22, 70000)},
		{longDir + "000002.cls", "2"},
		{"ñandú/画像.webp", blob(23, 333)},
		{"ñandú/画像.cls", "ñ"},
	}
	var names []string
	contents := map[string]string{}
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, f.name)
		contents[f.name] = f.data
	}
	wants := []want{
		{"n01/000001", "n01/000001.jpg", "1", ""},
		{longDir + "000002", longDir + "000002.png", "2", ""},
		{"ñandú/画像", "ñandú/画像.webp", "ñ", ""},
	}
	for _, format := range []string{"gnu", "posix", "ustar"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "shard.tar")
			args := append([]string{"--format=" + format, "-C", dir, "-cf", out}, names...)
			if msg, err := exec.Command(tarBin, args...).CombinedOutput(); err != nil {
				if format == "ustar" {
					t.Skipf("ustar cannot hold these names: %s", msg)
				}
				t.Fatalf("tar: %v: %s", err, msg)
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			got, err := walkAll(data, "shard.tar")
			if err != nil {
				t.Fatal(err)
			}
			checkSamples(t, data, "shard.tar", got, wants, contents)
		})
	}
}

// TestWalkGNUTarSparse checks GNU tar's sparse files, old GNU and PAX 1.0:
// a sparse image is an error, since its bytes are not one range of the
// archive, while a sparse member of another kind is skipped without
// disturbing the offsets of the members after it.
func TestWalkGNUTarSparse(t *testing.T) {
	tarBin := gnuTar(t)
	dir := t.TempDir()
	writeSparse := func(name string) {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(bytes.Repeat([]byte("A"), 4096)); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte("B"), 4096), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	writeSparse("000001.npy")
	writeSparse("000002.jpg")
	// 8 TiB of holes beside a sample: read, they would be zeros for
	// minutes (a crafted header says 2^63 bytes); skipped, they cost
	// nothing.
	if err := os.Truncate(filepath.Join(dir, "000001.npy"), 1<<43); err != nil {
		t.Skip(err)
	}
	img := blob(31, 3000)
	for name, data := range map[string]string{"000001.jpg": img, "000001.cls": "1", "000002.cls": "2"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "shard.tar")
			args := []string{"--format=" + format, "--sparse", "-C", dir, "-cf", out,
				"000001.npy", "000001.jpg", "000001.cls", "000002.jpg", "000002.cls"}
			if msg, err := exec.Command(tarBin, args...).CombinedOutput(); err != nil {
				t.Fatalf("tar: %v: %s", err, msg)
			}
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if data[156] != 'S' && !bytes.Contains(data, []byte("GNU.sparse.")) {
				t.Skip("the file system made no holes; tar stored the files whole")
			}
			var got []Sample
			done := make(chan error, 1)
			go func() {
				done <- Walk(bytes.NewReader(data), "shard.tar", func(s Sample) error {
					got = append(got, s)
					return nil
				})
			}()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the walk is still reading the sparse member's holes after 30 s")
			}
			if err == nil || !strings.Contains(err.Error(), `sample "000002"`) || !strings.Contains(err.Error(), "sparse") {
				t.Errorf("sparse image: error %v; want one naming sample 000002 and saying sparse", err)
			}
			checkSamples(t, data, "shard.tar", got, []want{{"000001", "000001.jpg", "1", ""}},
				map[string]string{"000001.jpg": img})
		})
	}
}

// An image with '#' in its name is named with %23 for it, which an image
// key (archive#name@range) keeps apart from the archive's name.
func TestWalkHashInName(t *testing.T) {
	img := blob(99, 3000)
	data := mkTar(t, 0, file("d#1/a.jpg", img), file("d#1/a.cls", "1"), file("d%231/a.jpg", img))
	got, err := walkAll(data, "pool/0.tar")
	if err != nil || len(got) != 2 {
		t.Fatalf("%+v, %v; want two samples", got, err)
	}
	m := got[0].Image
	if m.Name != "d%231/a.jpg" || got[0].Label != "1" || string(data[m.Offset:m.Offset+m.Size]) != img {
		t.Errorf("%+v: want d%%231/a.jpg, label 1, its bytes", got[0])
	}
	if back, ok := ParseKey(m.Key()); !ok || back != m {
		t.Errorf("ParseKey(%q) = %+v, %v", m.Key(), back, ok)
	}
	// A '%' is escaped too: a name that reads as the first's escape
	// stays apart from it.
	if got[1].Image.Name != "d%25231/a.jpg" {
		t.Errorf("d%%231/a.jpg named %q, want d%%25231/a.jpg", got[1].Image.Name)
	}
}

func TestWalkErrors(t *testing.T) {
	const archive = "gs://b/shards/000042.tar"
	img := blob(99, 3000)
	good := mkTar(t, tar.FormatPAX, file("a.jpg", img), file("a.cls", "1"), file("b.jpg", img), file("b.cls", "2"))
	cases := []struct {
		name   string
		data   []byte
		sample string   // the sample key the error must name ("" for none)
		says   []string // what else the message must say
		is     error    // an error it must wrap, if any
	}{
		{"two images", mkTar(t, 0, file("a.jpg", img), file("a.png", img), file("a.cls", "1")),
			"a", []string{"two images", `"a.jpg"`, `"a.png"`}, nil},
		{"hard link to no image", mkTar(t, 0, file("a.txt", "x"), ent{name: "b.jpg", typ: tar.TypeLink, link: "a.txt"}, file("b.cls", "1")),
			"b", []string{`"b.jpg" is a hard link to "a.txt"`}, nil},
		{"two labels", mkTar(t, 0, file("a.jpg", img), file("a.cls", "1"), file("a.CLS", "2")),
			"a", []string{"two .cls"}, nil},
		{"two domains", mkTar(t, 0, file("a.jpg", img), file("a.cls", "1"), file("a.domain", "x"), file("a.domain", "y")),
			"a", []string{"two .domain"}, nil},
		{"symlinked image", mkTar(t, 0, ent{name: "a.jpg", typ: tar.TypeSymlink, link: "../imgs/a.jpg"}, file("a.cls", "1")),
			"a", []string{`"a.jpg" is a symbolic link to "../imgs/a.jpg"`, "tar -h"}, nil},
		{"symlinked image, no label", mkTar(t, 0, file("a.jpg", img), file("a.cls", "1"), ent{name: "b.jpg", typ: tar.TypeSymlink, link: "a.jpg"}),
			"b", []string{`"b.jpg" is a symbolic link to "a.jpg"`}, nil},
		{"two undecoded images", mkTar(t, 0, file("a.tif", img), file("a.heic", img), file("a.cls", "1")),
			"a", []string{"two images", `"a.tif"`, `"a.heic"`}, nil},
		{"name too long", mkTar(t, tar.FormatPAX, file(strings.Repeat("x", 5000)+".jpg", img), file("a.cls", "1")),
			"", []string{"a member name of 5004 bytes", "at most 4096"}, nil},
		{"key reappears", mkTar(t, 0, file("a.cls", "1"), file("b.jpg", img), file("b.cls", "2"), file("a.jpg", img)),
			"a", []string{"reappears", `entry 4 ("a.jpg")`, `entry 1 ("a.cls")`, "consecutive", "tar --sort=name"}, nil},
		{"dotted keys", mkTar(t, 0, file("cam1.s1.jpg", img), file("cam1.s1.cls", "1"), file("cam2.s1.jpg", img), file("cam1.s2.jpg", img)),
			"cam1", []string{"reappears", `"cam1.s2.jpg" is of sample "cam1", a key ending at the first '.'`}, nil},
		{"label too large", mkTar(t, 0, file("a.jpg", img), file("a.cls", strings.Repeat("9", MaxText+1))),
			"a", []string{"a.cls", "at most 65536"}, nil},
		{"truncated in data", good[:512+1000], // inside a.jpg's data
			"a", []string{`"a.jpg"`}, io.ErrUnexpectedEOF},
		{"truncated at a member boundary", good[:len(good)-1024],
			"b", []string{"end-of-archive marker"}, nil},
		{"corrupt header", corruptSecondHeader(t, good),
			"a", []string{"after sample"}, tar.ErrHeader},
		{"empty file", nil, "", []string{"not a tar archive"}, nil},
		{"gzipped", gzipped(t, good), "", []string{"a gzip stream", "decompress"}, nil},
		{"not a tar", []byte(strings.Repeat("hello, world\n", 100)), "", []string{"reading tar"}, tar.ErrHeader},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := walkAll(c.data, archive)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, archive+": ") {
				t.Errorf("error %q does not start with the archive", msg)
			}
			if c.sample != "" && !strings.Contains(msg, fmt.Sprintf("sample %q", c.sample)) {
				t.Errorf("error %q does not name sample %q", msg, c.sample)
			}
			for _, s := range c.says {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not say %q", msg, s)
				}
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %q does not wrap %v", msg, c.is)
			}
		})
	}

	// One zero block and no second is what archive/tar itself accepts as an end.
	if got, err := walkAll(good[:len(good)-512], archive); err != nil || len(got) != 2 {
		t.Errorf("archive with one end block: %d samples, %v; want 2, nil", len(got), err)
	}
}

// gzipped is data compressed as python webdataset's writer does for a
// name ending in .gz.
func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	z.Write(data)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// corruptSecondHeader breaks the checksum of the header after sample "a".
func corruptSecondHeader(t *testing.T, data []byte) []byte {
	t.Helper()
	var off int64 = -1
	err := Walk(bytes.NewReader(data), "x.tar", func(s Sample) error {
		if s.Key == "b" {
			off = s.Image.Offset - 512 // b.jpg's header block
		}
		return nil
	})
	if err != nil || off < 0 {
		t.Fatalf("locating b.jpg: %v", err)
	}
	out := bytes.Clone(data)
	out[off+148] ^= 0x7 // the checksum field
	return out
}

func TestWalkFnError(t *testing.T) {
	stop := errors.New("stop")
	data := mkTar(t, 0, file("a.jpg", "x"), file("a.cls", "1"), file("b.jpg", "y"), file("b.cls", "2"))
	calls := 0
	err := Walk(bytes.NewReader(data), "a.tar", func(Sample) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("Walk = %v after %d calls; want fn's error unchanged after 1", err, calls)
	}
}

func TestKey(t *testing.T) {
	m := Member{Archive: "pool/00000.tar", Name: "n01/000123.png", Offset: 1536, Size: 812}
	if got, want := m.Key(), "pool/00000.tar#n01/000123.png@1536+812"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
	roundTrip := []Member{
		m,
		{Archive: "s3://b/p/0.tar?region=x&endpoint=http://h:9000", Name: "a/b.jpg", Offset: 0, Size: 0},
		{Archive: "file:///data/pool/shard#7.tar", Name: "x@1+2/y@3+4.png", Offset: 1 << 40, Size: 1<<63 - 1 - 1<<40},
		{Archive: "azblob://c/p.tar", Name: "ñandú/画像 1.webp", Offset: 512, Size: 1},
		{Archive: "gs://b/p.tar?x=a#b", Name: "+@", Offset: 7, Size: 9},
		{Archive: "pool?v2/a.tar", Name: "x.png", Offset: 512, Size: 3}, // '?' in a key is no query
	}
	for _, m := range roundTrip {
		got, ok := ParseKey(m.Key())
		if !ok || got != m {
			t.Errorf("ParseKey(%q) = %+v, %v; want %+v", m.Key(), got, ok, m)
		}
	}
	rejected := []string{
		"",
		"pool/a.png",
		"pool/a.tar",
		"pool/a.zip#a.png@1+2",                    // not a .tar
		"pool/a.tar.gz#a.png@1+2",                 // not a .tar
		"s3://b/a.tgz?x=.tar#a.png@1+2",           // .tar only in the query
		"pool/a.tar/a.png@1+2",                    // no '#'
		"pool/a.tar#@1+2",                         // empty name
		"pool/a.tar#a.png",                        // no range
		"pool/a.tar#a.png@1",                      // no size
		"pool/a.tar#a.png@+2",                     // no offset
		"pool/a.tar#a.png@1+",                     // empty size
		"pool/a.tar#a.png@-1+2",                   // sign
		"pool/a.tar#a.png@+1+2",                   // sign
		"pool/a.tar#a.png@1+-2",                   // sign
		"pool/a.tar#a.png@01+2",                   // not as Key writes it
		"pool/a.tar#a.png@1+2x",                   // trailing junk
		"pool/a.tar#a.png@1+2+3",                  // two '+'
		"pool/a.tar#a.png@ 1+2",                   // space
		"pool/a.tar#a.png@99999999999999999999+1", // overflow
		"pool/a.tar#a.png@9223372036854775807+1",  // end overflows
		"pool/a.tar#a#b.png@1+2",                  // '#' in name: splits into archive "pool/a.tar#a"
	}
	for _, k := range rejected {
		if m, ok := ParseKey(k); ok {
			t.Errorf("ParseKey(%q) = %+v, true; want false", k, m)
		}
	}
}

// store serves range reads from in-memory archives and counts them.
type store struct {
	archives map[string][]byte
	calls    atomic.Int64
	jitter   bool
}

func (s *store) read(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
	s.calls.Add(1)
	if s.jitter {
		time.Sleep(time.Duration(rand.Intn(200)) * time.Microsecond)
	}
	data, ok := s.archives[archive]
	if !ok {
		return nil, fmt.Errorf("%s: %w", archive, os.ErrNotExist)
	}
	if offset < 0 || length < 0 || offset+length > int64(len(data)) {
		return nil, fmt.Errorf("%s: range [%d,+%d) outside %d bytes", archive, offset, length, len(data))
	}
	return bytes.Clone(data[offset : offset+length]), nil
}

// held checks that r holds no span data and no untaken occurrence.
func held(r *Reader) (fetched, pending, queued int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if s.fetch != nil {
			fetched++
		}
		pending += s.pending
	}
	return fetched, pending, len(r.queues)
}

func TestNewReaderPlan(t *testing.T) {
	a := func(off, size int64) Member {
		return Member{Archive: "a.tar", Name: fmt.Sprint(off), Offset: off, Size: size}
	}
	b := func(off, size int64) Member {
		return Member{Archive: "b.tar", Name: fmt.Sprint(off), Offset: off, Size: size}
	}
	const maxSpan = 1 << 20
	members := []Member{
		a(0, 100), a(100, 100), a(300, 100), // gaps 0 and 100: one span [0,400)
		b(0, 50),                                // another archive
		a(400, 100),                             // back to a: consecutive in order only, so a new span
		a(500+MaxGap, 10),                       // gap of exactly MaxGap: same span
		a(510+MaxGap+MaxGap+1, 10),              // gap over MaxGap: new span
		a(0, 100),                               // before the previous end (a duplicate): new span
		a(100, maxSpan-100),                     // ends at maxSpan: same span
		a(maxSpan, 1),                           // would make maxSpan+1: new span
		a(maxSpan+1, 2*maxSpan),                 // larger than maxSpan alone: own span
		a(3*maxSpan+1, 10),                      // new span after the big one
		{Archive: "a.tar", Offset: -1, Size: 5}, // invalid: not planned
	}
	r := NewReader(members, (&store{}).read, maxSpan)
	type sp struct {
		archive        string
		offset, length int64
		pending        int
	}
	want := []sp{
		{"a.tar", 0, 400, 3},
		{"b.tar", 0, 50, 1},
		{"a.tar", 400, 110 + MaxGap, 2},
		{"a.tar", 510 + 2*MaxGap + 1, 10, 1},
		{"a.tar", 0, maxSpan, 2},
		{"a.tar", maxSpan, 1, 1},
		{"a.tar", maxSpan + 1, 2 * maxSpan, 1},
		{"a.tar", 3*maxSpan + 1, 10, 1},
	}
	var got []sp
	for _, s := range r.spans {
		got = append(got, sp{s.archive, s.offset, s.length, s.pending})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("spans\n got %v\nwant %v", got, want)
	}
	if q := r.queues[a(0, 100)]; len(q) != 2 || q[0] != r.spans[0] || q[1] != r.spans[4] {
		t.Errorf("a(0,100) is planned in %v, want spans 0 and 4", q)
	}
}

// readerFixture builds two archives and a read order over their images that
// has every planning case: interleaved archives, members out of order, a
// member larger than maxSpan, gaps larger than MaxGap, and duplicates.
func readerFixture(t *testing.T) (archives map[string][]byte, order []Member, contents map[Member]string) {
	t.Helper()
	rng := rand.New(rand.NewSource(1))
	archives = map[string][]byte{}
	contents = map[Member]string{}
	var perArchive [][]Member
	for ai, name := range []string{"mem://pool/a.tar", "s3://bkt/pool/b.tar?region=x"} {
		var entries []ent
		for i := 0; i < 120; i++ {
			key := fmt.Sprintf("c%d/%06d", i%3, i)
			size := 1 + rng.Intn(20000)
			switch {
			case i == 17:
				size = 300 << 10 // larger than maxSpan
			case i%10 == 3:
				size = 0
			}
			entries = append(entries, file(key+".jpg", blob(int64(ai*1000+i), size)), file(key+".cls", "c"))
			if i%25 == 24 {
				// A large non-image member: a gap over MaxGap.
				entries = append(entries, file(key+".npy", blob(int64(i), MaxGap+1000)))
			}
		}
		data := mkTar(t, tar.FormatPAX, entries...)
		archives[name] = data
		got, err := walkAll(data, name)
		if err != nil {
			t.Fatal(err)
		}
		var ms []Member
		for _, s := range got {
			ms = append(ms, s.Image)
			contents[s.Image] = string(data[s.Image.Offset : s.Image.Offset+s.Image.Size])
		}
		perArchive = append(perArchive, ms)
	}
	// Interleave the archives in runs of 1 to 8 members.
	a, b := perArchive[0], perArchive[1]
	for len(a) > 0 || len(b) > 0 {
		n := 1 + rng.Intn(8)
		n = min(n, len(a))
		order, a = append(order, a[:n]...), a[n:]
		n = min(1+rng.Intn(8), len(b))
		order, b = append(order, b[:n]...), b[n:]
	}
	// Out of order: swap some neighbours.
	for i := 0; i+1 < len(order); i += 11 {
		order[i], order[i+1] = order[i+1], order[i]
	}
	// Duplicates: right after the member, and again much later.
	order = append(order[:50], append([]Member{order[49]}, order[50:]...)...)
	order = append(order, order[10], order[11], order[200])
	return archives, order, contents
}

func TestReaderConcurrent(t *testing.T) {
	archives, order, contents := readerFixture(t)
	const maxSpan = 256 << 10
	for round := 0; round < 3; round++ {
		st := &store{archives: archives, jitter: true}
		r := NewReader(order, st.read, maxSpan)
		r.Readahead = []int{0, 2, 5}[round] // fetching ahead changes no answer and fetches no span twice
		spans := len(r.spans)
		if spans < 20 || spans > len(order)/2 {
			t.Fatalf("planned %d spans for %d members; the fixture does not exercise grouping", spans, len(order))
		}

		// A mostly-in-order random interleaving: indices go out in order,
		// shuffled within small windows, and 16 goroutines take them with
		// random pauses.
		rng := rand.New(rand.NewSource(int64(round)))
		idx := rng.Perm(len(order))
		for i := range idx {
			idx[i] = i
		}
		for i := 0; i < len(idx); i += 6 {
			w := idx[i:min(i+6, len(idx))]
			rng.Shuffle(len(w), func(a, b int) { w[a], w[b] = w[b], w[a] })
		}
		work := make(chan int)
		go func() {
			for _, i := range idx {
				work <- i
			}
			close(work)
		}()
		var wg sync.WaitGroup
		var failures atomic.Int64
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func(seed int64) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(seed))
				for i := range work {
					if rng.Intn(4) == 0 {
						time.Sleep(time.Duration(rng.Intn(300)) * time.Microsecond)
					}
					m := order[i]
					got, err := r.Read(context.Background(), m)
					if err != nil {
						t.Errorf("Read(%s): %v", m.Key(), err)
						failures.Add(1)
						continue
					}
					if string(got) != contents[m] {
						t.Errorf("Read(%s): wrong bytes (%d, want %d)", m.Key(), len(got), len(contents[m]))
						failures.Add(1)
					}
				}
			}(int64(round*100 + g))
		}
		wg.Wait()
		if failures.Load() > 0 {
			return
		}
		if got := st.calls.Load(); got != int64(spans) {
			t.Errorf("round %d: %d fetches for %d planned spans", round, got, spans)
		}
		if f, p, q := held(r); f != 0 || p != 0 || q != 0 {
			t.Errorf("round %d: after all reads the reader holds %d fetched spans, %d pending reads, %d queued members", round, f, p, q)
		}

		// Past the plan, a member is read on its own.
		m := order[5]
		got, err := r.Read(context.Background(), m)
		if err != nil || string(got) != contents[m] {
			t.Errorf("unplanned Read: %d bytes, %v", len(got), err)
		}
		unplanned := Member{Archive: "mem://pool/a.tar", Name: "header", Offset: 0, Size: 100}
		if got, err := r.Read(context.Background(), unplanned); err != nil || !bytes.Equal(got, archives[unplanned.Archive][:100]) {
			t.Errorf("unplanned Read: %v", err)
		}
		if got := st.calls.Load(); got != int64(spans)+2 {
			t.Errorf("%d fetches after two unplanned reads, want %d", got, spans+2)
		}
		if f, _, _ := held(r); f != 0 {
			t.Errorf("unplanned reads left %d spans held", f)
		}
	}
}

func TestReaderShortAndMissing(t *testing.T) {
	short := func(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
		return make([]byte, length/2), nil
	}
	m := Member{Archive: "a.tar", Name: "x.jpg", Offset: 512, Size: 100}
	r := NewReader([]Member{m}, short, 1<<20)
	if _, err := r.Read(context.Background(), m); !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "a.tar") {
		t.Errorf("short read: %v; want io.ErrUnexpectedEOF naming the archive", err)
	}
	st := &store{archives: map[string][]byte{}}
	r = NewReader([]Member{m}, st.read, 1<<20)
	if _, err := r.Read(context.Background(), m); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing archive: %v; want the ReadRange error", err)
	}
	if _, err := r.Read(context.Background(), Member{Archive: "a.tar", Offset: -1, Size: 1}); err == nil {
		t.Error("negative offset: no error")
	}
}

// gate is a ReadRange whose calls block until released, each with the
// outcome it is released with.
type gate struct {
	data    []byte
	started chan struct{}
	release chan error
	calls   atomic.Int64
}

func newGate(data []byte) *gate {
	return &gate{data: data, started: make(chan struct{}, 100), release: make(chan error, 100)}
}

func (g *gate) read(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
	g.calls.Add(1)
	g.started <- struct{}{}
	if err := <-g.release; err != nil {
		return nil, err
	}
	return bytes.Clone(g.data[offset : offset+length]), nil
}

// gateFixture is one archive of four adjacent members, planned as one span.
func gateFixture() ([]byte, []Member) {
	data := []byte(blob(5, 4000))
	var ms []Member
	for i := int64(0); i < 4; i++ {
		ms = append(ms, Member{Archive: "g.tar", Name: fmt.Sprint(i), Offset: i * 1000, Size: 1000})
	}
	return data, ms
}

// waitTaken waits until Reads of ms have taken their occurrences, and then
// a little more, for them to start waiting on the fetch.
func waitTaken(t *testing.T, r *Reader, ms ...Member) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		n := 0
		for _, m := range ms {
			n += len(r.queues[m])
		}
		r.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Reads did not start")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
}

func TestReaderFetchError(t *testing.T) {
	data, ms := gateFixture()
	g := newGate(data)
	r := NewReader(ms, g.read, 1<<20)
	if len(r.spans) != 1 {
		t.Fatalf("%d spans, want 1", len(r.spans))
	}
	boom := errors.New("boom")
	errs := make([]error, 3)
	var wg sync.WaitGroup
	read := func(i int) {
		defer wg.Done()
		_, errs[i] = r.Read(context.Background(), ms[i])
	}
	// Reads 1 and 2 wait on read 0's fetch before it fails: a sleep would
	// let one of them, held back by a loaded machine, find the failed
	// fetch gone and start another, which nothing releases.
	var waiting atomic.Int32
	testHookWaiting = func() { waiting.Add(1) }
	defer func() { testHookWaiting = func() {} }()
	wg.Add(1)
	go read(0)
	<-g.started // read 0 is fetching
	wg.Add(2)
	go read(1)
	go read(2)
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Reads 1 and 2 did not wait on the fetch")
		}
	}
	g.release <- boom
	wg.Wait()
	for i, err := range errs {
		if err != boom {
			t.Errorf("Read %d: %v; want the fetch's error, unwrapped", i, err)
		}
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("%d fetches; the waiters should have shared the failed one", n)
	}

	// The next Read of the span fetches again.
	g.release <- nil
	got, err := r.Read(context.Background(), ms[3])
	if err != nil || !bytes.Equal(got, data[3000:4000]) {
		t.Fatalf("Read after failure: %v", err)
	}
	if n := g.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
	// The failed Reads counted as reads, so the span is dropped, and a retry
	// of a failed member reads it alone.
	if f, p, q := held(r); f != 0 || p != 0 || q != 0 {
		t.Errorf("reader holds %d spans, %d pending, %d queued", f, p, q)
	}
	g.release <- nil
	got, err = r.Read(context.Background(), ms[0])
	if err != nil || !bytes.Equal(got, data[:1000]) {
		t.Fatalf("retry: %v", err)
	}
	if n := g.calls.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
}

func TestReaderCancelWhileWaiting(t *testing.T) {
	data, ms := gateFixture()
	g := newGate(data)
	r := NewReader(ms, g.read, 1<<20)

	var wg sync.WaitGroup
	var got0 []byte
	var err0 error
	wg.Add(1)
	go func() {
		defer wg.Done()
		got0, err0 = r.Read(context.Background(), ms[0])
	}()
	<-g.started

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Read(ctx, ms[1])
		errc <- err
	}()
	waitTaken(t, r, ms[1])
	cancel()
	if err := <-errc; err != context.Canceled {
		t.Errorf("cancelled waiter: %v; want context.Canceled", err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if _, err := r.Read(tctx, ms[2]); err != context.DeadlineExceeded {
		t.Errorf("waiter past its deadline: %v; want context.DeadlineExceeded", err)
	}

	g.release <- nil
	wg.Wait()
	if err0 != nil || !bytes.Equal(got0, data[:1000]) {
		t.Fatalf("fetching Read: %v", err0)
	}
	got, err := r.Read(context.Background(), ms[3])
	if err != nil || !bytes.Equal(got, data[3000:]) {
		t.Fatalf("last Read: %v", err)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
	if f, p, q := held(r); f != 0 || p != 0 || q != 0 {
		t.Errorf("reader holds %d spans, %d pending, %d queued", f, p, q)
	}
}

// TestReaderFetcherCancelled checks that when the Read making a fetch is
// cancelled, Reads waiting on it fetch again instead of failing with
// another caller's cancellation.
func TestReaderFetcherCancelled(t *testing.T) {
	data, ms := gateFixture()
	g := newGate(data)
	r := NewReader(ms, g.read, 1<<20)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Read(ctx, ms[0])
		errc <- err
	}()
	<-g.started
	var wg sync.WaitGroup
	var got1 []byte
	var err1 error
	wg.Add(1)
	go func() {
		defer wg.Done()
		got1, err1 = r.Read(context.Background(), ms[1])
	}()
	waitTaken(t, r, ms[1])
	cancel()
	g.release <- context.Canceled // what a ReadRange returns when its ctx ends
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled fetcher: %v", err)
	}
	<-g.started // the waiter fetches again
	g.release <- nil
	wg.Wait()
	if err1 != nil || !bytes.Equal(got1, data[1000:2000]) {
		t.Errorf("waiter: %v; want its bytes", err1)
	}
	if n := g.calls.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// With Readahead n, the first Read of a span fetches the n spans after it
// at the same time, and each span is still fetched once.
func TestReaderReadahead(t *testing.T) {
	data, ms := gateFixture()
	g := newGate(data)
	r := NewReader(ms, g.read, 1000) // a span per member
	r.Readahead = 2
	if len(r.spans) != 4 {
		t.Fatalf("%d spans, want 4", len(r.spans))
	}
	started := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-g.started:
			case <-time.After(5 * time.Second):
				t.Fatalf("%d fetches started, want %d at once", g.calls.Load(), n)
			}
		}
		select {
		case <-g.started:
			t.Fatalf("%d fetches started, want %d", g.calls.Load(), n)
		case <-time.After(50 * time.Millisecond):
		}
	}
	check := func(i int, got []byte, err error) {
		t.Helper()
		if err != nil || !bytes.Equal(got, data[i*1000:(i+1)*1000]) {
			t.Fatalf("Read(%d): %d bytes, %v", i, len(got), err)
		}
	}
	type result struct {
		data []byte
		err  error
	}
	first := make(chan result)
	go func() {
		got, err := r.Read(context.Background(), ms[0])
		first <- result{got, err}
	}()
	started(3) // spans 0, 1 and 2, before any returns
	for range 3 {
		g.release <- nil
	}
	res := <-first
	check(0, res.data, res.err)

	got, err := r.Read(context.Background(), ms[1]) // fetched ahead: no wait
	check(1, got, err)
	started(1) // span 3, the second after span 1
	g.release <- nil
	for i := 2; i < 4; i++ {
		got, err := r.Read(context.Background(), ms[i])
		check(i, got, err)
	}
	if g.calls.Load() != 4 {
		t.Errorf("%d fetches for 4 spans", g.calls.Load())
	}
	if f, p, q := held(r); f != 0 || p != 0 || q != 0 {
		t.Errorf("after all reads the reader holds %d fetched spans, %d pending reads, %d queued members", f, p, q)
	}
}

// Readahead holds at most Readahead×maxSpan bytes: members larger than
// maxSpan are not fetched ahead, however many spans it allows.
func TestReaderReadaheadBytes(t *testing.T) {
	data := []byte(blob(9, 12000))
	var ms []Member
	for i := int64(0); i < 4; i++ {
		ms = append(ms, Member{Archive: "g.tar", Name: fmt.Sprint(i), Offset: i * 3000, Size: 3000})
	}
	st := &store{archives: map[string][]byte{"g.tar": data}}
	r := NewReader(ms, st.read, 1000) // a span per member, each 3× maxSpan
	r.Readahead = 2
	got, err := r.Read(context.Background(), ms[0])
	if err != nil || !bytes.Equal(got, data[:3000]) {
		t.Fatalf("Read: %d bytes, %v", len(got), err)
	}
	time.Sleep(50 * time.Millisecond) // for fetches started ahead, if any
	if n := st.calls.Load(); n != 1 {
		t.Errorf("%d fetches after reading the first member, want 1: spans of 3000 bytes exceed 2×1000 ahead", n)
	}
}

// BenchmarkReaderRemote reads 24 MiB of 100 KB members in order, 16 at
// once as an embedding does, from a simulated object store whose range
// reads take 5 ms and then stream at 50 MB/s, with spans of 1 to 8 MiB and
// readahead 0 to 15. It reports the throughput and how long the first
// member took: a shard's first batch waits for its whole first span.
func BenchmarkReaderRemote(b *testing.B) {
	const member, members = 100 << 10, 240
	var ms []Member
	for i := range members {
		ms = append(ms, Member{Archive: "a.tar", Name: fmt.Sprint(i), Offset: int64(i) * member, Size: member})
	}
	remote := func(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
		time.Sleep(5*time.Millisecond + time.Duration(length)*time.Second/(50<<20))
		return make([]byte, length), nil
	}
	for _, c := range []struct {
		span  int64
		ahead int
	}{{8 << 20, 0}, {8 << 20, 1}, {8 << 20, 3}, {2 << 20, 0}, {2 << 20, 3}, {2 << 20, 7}, {1 << 20, 15}} {
		b.Run(fmt.Sprintf("span_%dMiB_readahead_%d", c.span>>20, c.ahead), func(b *testing.B) {
			var first time.Duration
			for b.Loop() {
				r := NewReader(ms, remote, c.span)
				r.Readahead = c.ahead
				work := make(chan Member)
				var wg sync.WaitGroup
				start := time.Now()
				var once sync.Once
				for range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for m := range work {
							if _, err := r.Read(context.Background(), m); err != nil {
								b.Error(err)
							}
							if m.Name == "0" {
								once.Do(func() { first += time.Since(start) })
							}
						}
					}()
				}
				for _, m := range ms {
					work <- m
				}
				close(work)
				wg.Wait()
			}
			b.ReportMetric(float64(b.N*members*member)/(1<<20)/b.Elapsed().Seconds(), "MiB/s")
			b.ReportMetric(first.Seconds()*1e3/float64(b.N), "ms_first")
		})
	}
}
