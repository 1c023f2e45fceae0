package dataset

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"maps"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob"

	"dcd/internal/webdataset"
	"dcd/schemas"
)

// tinyPNG is a distinct 3×3 gray PNG for each n.
func tinyPNG(t *testing.T, n int) string {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, 3, 3))
	for i := range img.Pix {
		img.Pix[i] = uint8(n*9 + i)
	}
	img.Set(0, 0, color.Gray{uint8(n)})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// packWorld stores n distinct PNGs, m/img/<i>.png, and the manifest
// m/list.csv listing them (label i%3, domain fog for odd i), with a
// missing image and a text file after the fifth.
func packWorld(t *testing.T, n int) (b *blob.Bucket, files map[string]string, manifest string) {
	files = map[string]string{"m/notes.txt": "not an image"}
	manifest = "uri,label,domain\n"
	for i := range n {
		files[fmt.Sprintf("m/img/%d.png", i)] = tinyPNG(t, i)
		manifest += fmt.Sprintf("img/%d.png,%d,%s\n", i, i%3, []string{"", "fog"}[i%2])
		if i == 4 {
			manifest += "img/missing.png,1,\nnotes.txt,2,\n"
		}
	}
	files["m/list.csv"] = manifest
	return memBucket(t, files), files, manifest
}

// A packed dataset is the same dataset: walking the archives gives its
// images' bytes, labels and domains in its order, less what could not be
// packed, which is listed with the reason.
func TestPack(t *testing.T) {
	ctx := context.Background()
	b, files, _ := packWorld(t, 8)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	var archived []string
	res, err := src.Pack(ctx, source, "packed/", PackOptions{PerArchive: 3, Readers: 4, Archived: func(a string, n, _ int) {
		archived = append(archived, fmt.Sprintf("%s=%d", a, n))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"packed/000000.tar=3", "packed/000001.tar=3", "packed/000002.tar=2"}; !slices.Equal(archived, want) {
		t.Errorf("archives written %q, want %q", archived, want)
	}
	if res.Images != 8 || len(res.Archives) != 3 || res.Bytes == 0 {
		t.Errorf("Packed = %+v", res)
	}
	if len(res.Skipped) != 2 || res.Skipped[0].URI != "m/img/missing.png" || !strings.Contains(res.Skipped[1].Reason, "not a JPEG, PNG") {
		t.Errorf("skipped %+v; want m/img/missing.png, then m/notes.txt as no image", res.Skipped)
	}
	skipped, err := b.ReadAll(ctx, "packed/skipped.csv")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(skipped)).ReadAll()
	if err != nil || len(rows) != 3 || rows[1][1] != "m/img/missing.png" || !strings.Contains(rows[1][2], "NotFound") || rows[2][1] != "m/notes.txt" {
		t.Errorf("packed/skipped.csv: %q, %v", rows, err)
	}
	sources, err := b.ReadAll(ctx, "packed/000001.sources.csv")
	// Positions in the dataset: img/4.png is the fifth row, missing.png and
	// notes.txt the sixth and seventh.
	if want := "sample,item,uri\n000000003,3,m/img/3.png\n000000004,4,m/img/4.png\n000000005,7,m/img/5.png\n"; err != nil || string(sources) != want {
		t.Errorf("packed/000001.sources.csv = %q, %v; want %q", sources, err, want)
	}

	orig, err := walkAll(t, src, source)
	if err != nil {
		t.Fatal(err)
	}
	got, err := walkAll(t, src, schemas.Dataset{WebDataset: "packed"})
	if err != nil {
		t.Fatal(err)
	}
	var want []Item
	for _, it := range orig {
		if it.Key != "m/img/missing.png" && it.Key != "m/notes.txt" {
			want = append(want, it)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("the packed dataset has %d images, want %d", len(got), len(want))
	}
	for i, g := range got {
		m, ok := webdataset.ParseKey(g.Key)
		if !ok {
			t.Fatalf("packed image %q is not an archive member", g.Key)
		}
		arc, _ := b.ReadAll(ctx, m.Archive)
		if g.Label != want[i].Label || g.Domain != want[i].Domain || string(arc[m.Offset:m.Offset+m.Size]) != files[want[i].Key] {
			t.Errorf("packed image %d (%s): label %q domain %q, or bytes, differ from %s's (%q, %q)", i, g.Key, g.Label, g.Domain, want[i].Key, want[i].Label, want[i].Domain)
		}
	}

	// Packing again gives the same archives; packing another dataset over
	// them is refused.
	if _, err := src.Pack(ctx, source, "again", PackOptions{PerArchive: 3, Readers: 1}); err != nil {
		t.Fatal(err)
	}
	for _, a := range res.Archives {
		one, _ := b.ReadAll(ctx, a)
		two, _ := b.ReadAll(ctx, "again/"+strings.TrimPrefix(a, "packed/"))
		if !bytes.Equal(one, two) {
			t.Errorf("%s differs when packed again with other readers", a)
		}
	}
	if _, err := src.Pack(ctx, source, "packed", PackOptions{PerArchive: 4}); err == nil || !strings.Contains(err.Error(), "empty prefix") {
		t.Errorf("packing with another -per-archive into a prefix that holds a pack: %v, want a refusal", err)
	}
	if _, err := src.Pack(ctx, source, "m", PackOptions{}); err == nil || !strings.Contains(err.Error(), "no pack.json") {
		t.Errorf("packing into a prefix that holds other objects: %v, want a refusal", err)
	}
	if _, err := src.Pack(ctx, schemas.Dataset{WebDataset: "packed"}, "x", PackOptions{}); err == nil {
		t.Error("packing a webdataset: no error")
	}
}

// A dataset that cannot be listed fails the pack and commits no archive.
func TestPackBadDataset(t *testing.T) {
	ctx := context.Background()
	b := memBucket(t, map[string]string{
		"m/ok.png":   tinyPNG(t, 1),
		"m/list.csv": "uri,label\nok.png,1\nok.png\n", // the second row lacks its label
	})
	_, err := Source{Bucket: b}.Pack(ctx, schemas.Dataset{Manifest: "m/list.csv"}, "out", PackOptions{PerArchive: 10})
	if err == nil || !strings.Contains(err.Error(), "list.csv") {
		t.Fatalf("pack of a bad manifest: %v; want an error naming it", err)
	}
	if ok, _ := b.Exists(ctx, "out/000000.tar"); ok {
		t.Error("a failed pack committed its first archive")
	}
}

// A pack interrupted after any archive resumes where it stopped, and ends
// with the archives, sources and skip list of a pack never interrupted.
func TestPackResumes(t *testing.T) {
	ctx := context.Background()
	b, _, manifest := packWorld(t, 10)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	opt := PackOptions{PerArchive: 3, Readers: 3}
	whole, err := src.Pack(ctx, source, "whole", opt)
	if err != nil {
		t.Fatal(err)
	}
	objects := func(prefix string) map[string]string {
		m := map[string]string{}
		it := b.List(&blob.ListOptions{Prefix: prefix + "/"})
		for {
			obj, err := it.Next(ctx)
			if err != nil {
				return m
			}
			data, _ := b.ReadAll(ctx, obj.Key)
			m[strings.TrimPrefix(obj.Key, prefix+"/")] = string(data)
		}
	}
	want := objects("whole")
	for stopAfter := range len(whole.Archives) {
		out := fmt.Sprintf("stopped-after-%d", stopAfter)
		cctx, cancel := context.WithCancel(ctx)
		o := opt
		o.Archived = func(archive string, _, _ int) {
			if strings.HasSuffix(archive, fmt.Sprintf("%06d.tar", stopAfter)) {
				cancel()
			}
		}
		_, err := src.Pack(cctx, source, out, o)
		cancel()
		if stopAfter < len(whole.Archives)-1 && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: the interrupted pack returned %v", out, err)
		}
		res, err := src.Pack(ctx, source, out, opt)
		if err != nil {
			t.Fatalf("%s: resume: %v", out, err)
		}
		if res.Resumed != stopAfter+1 || res.Images != whole.Images || len(res.Skipped) != len(whole.Skipped) || res.Bytes != whole.Bytes {
			t.Errorf("%s: resumed %d archives, then %d images, %d skipped, %d bytes; want %d archives resumed, %d, %d, %d",
				out, res.Resumed, res.Images, len(res.Skipped), res.Bytes, stopAfter+1, whole.Images, len(whole.Skipped), whole.Bytes)
		}
		if got := objects(out); !maps.Equal(got, want) {
			t.Errorf("%s: after resuming, the prefix holds %d objects unlike the uninterrupted pack's %d", out, len(got), len(want))
		}
	}

	// A dataset that changed under the pack is not resumed: here the last
	// image packed, 2.png, is no longer where it was.
	cctx, cancel := context.WithCancel(ctx)
	o := opt
	o.Archived = func(string, int, int) { cancel() }
	if _, err := src.Pack(cctx, source, "changed", o); !errors.Is(err, context.Canceled) {
		t.Fatalf("the interrupted pack returned %v", err)
	}
	b.WriteAll(ctx, "m/list.csv", []byte(strings.Replace(manifest, "img/1.png,1,fog\n", "", 1)), nil)
	_, err = src.Pack(ctx, source, "changed", opt)
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Errorf("resuming over a changed dataset: %v, want a refusal", err)
	}
}
