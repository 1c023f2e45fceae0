package dataset

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"

	"dcd/internal/store/storetest"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// refusedKey is S3's refusal of the worker's access key.
type refusedKey struct{}

func (refusedKey) Error() string     { return "api error InvalidAccessKeyId: the key is not ours" }
func (refusedKey) ErrorCode() string { return "InvalidAccessKeyId" }

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

// pack runs a whole pack of ds into out in this process, as PackWorkflow
// runs it on workers: the archives are written last first, as a pack
// spread over workers may finish them in any order.
func pack(t *testing.T, src Source, ds schemas.Dataset, out string, per, readers int) ([]Archive, error) {
	t.Helper()
	ctx := context.Background()
	if err := src.StartPack(ctx, ds, out, per); err != nil {
		return nil, err
	}
	items, err := walkAll(t, src, ds)
	if err != nil {
		return nil, err
	}
	archives := make([]Archive, (len(items)+per-1)/per)
	for n := len(archives) - 1; n >= 0; n-- {
		if archives[n], err = src.PackArchive(ctx, out, n, items[n*per:min((n+1)*per, len(items))], readers, nil); err != nil {
			return nil, err
		}
	}
	_, err = src.FinishPack(ctx, out, len(archives), nil)
	return archives, err
}

// objects reads every object under prefix, by key relative to it.
func objects(t *testing.T, b *blob.Bucket, prefix string) map[string]string {
	t.Helper()
	m := map[string]string{}
	it := b.List(&blob.ListOptions{Prefix: prefix + "/"})
	for {
		obj, err := it.Next(context.Background())
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := b.ReadAll(context.Background(), obj.Key)
		m[strings.TrimPrefix(obj.Key, prefix+"/")] = string(data)
	}
}

// A packed dataset is the same dataset: walking the archives gives its
// images' bytes, labels and domains in its order, less what could not be
// packed, which is listed with the reason.
func TestPack(t *testing.T) {
	ctx := context.Background()
	b, files, _ := packWorld(t, 8)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	archives, err := pack(t, src, source, "packed/", 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Ten items: img/0–4, missing.png, notes.txt, img/5–7.
	var got []string
	for _, a := range archives {
		got = append(got, fmt.Sprintf("%s=%d+%d", a.Key, a.Images, len(a.Skipped)))
		if a.Bytes == 0 || a.Resumed {
			t.Errorf("%+v", a)
		}
	}
	if want := []string{"packed/000000.tar=3+0", "packed/000001.tar=2+1", "packed/000002.tar=2+1", "packed/000003.tar=1+0"}; !slices.Equal(got, want) {
		t.Errorf("archives written %q, want %q", got, want)
	}
	if sk := archives[1].Skipped[0]; sk.Item != 5 || sk.URI != "m/img/missing.png" || !strings.Contains(sk.Reason, "NotFound") {
		t.Errorf("archive 1 skipped %+v; want m/img/missing.png, item 5, not found", sk)
	}
	skipped, err := b.ReadAll(ctx, "packed/skipped.csv")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(skipped)).ReadAll()
	if err != nil || len(rows) != 3 || rows[1][1] != "m/img/missing.png" || rows[2][0] != "6" || rows[2][1] != "m/notes.txt" || !strings.Contains(rows[2][2], "not a JPEG, PNG") {
		t.Errorf("packed/skipped.csv: %q, %v", rows, err)
	}
	sources, err := b.ReadAll(ctx, "packed/000002.sources.csv")
	// Samples are named by their positions in the dataset.
	if want := "sample,item,uri,label,domain,version\n000000007,7,m/img/5.png,2,fog,\n000000008,8,m/img/6.png,0,,\n"; err != nil || string(sources) != want {
		t.Errorf("packed/000002.sources.csv = %q, %v; want %q", sources, err, want)
	}

	orig, err := walkAll(t, src, source)
	if err != nil {
		t.Fatal(err)
	}
	packed, err := walkAll(t, src, schemas.Dataset{WebDataset: "packed"})
	if err != nil {
		t.Fatal(err)
	}
	var want []Item
	for _, it := range orig {
		if it.Key != "m/img/missing.png" && it.Key != "m/notes.txt" {
			want = append(want, it)
		}
	}
	if len(packed) != len(want) {
		t.Fatalf("the packed dataset has %d images, want %d", len(packed), len(want))
	}
	for i, g := range packed {
		m, ok := webdataset.ParseKey(g.Key)
		if !ok {
			t.Fatalf("packed image %q is not an archive member", g.Key)
		}
		arc, _ := b.ReadAll(ctx, m.Archive)
		if g.Label != want[i].Label || g.Domain != want[i].Domain || string(arc[m.Offset:m.Offset+m.Size]) != files[want[i].Key] {
			t.Errorf("packed image %d (%s): label %q domain %q, or bytes, differ from %s's (%q, %q)", i, g.Key, g.Label, g.Domain, want[i].Key, want[i].Label, want[i].Domain)
		}
	}

	// Packing again gives the same objects; packing another dataset over
	// them is refused.
	if _, err := pack(t, src, source, "again", 3, 1); err != nil {
		t.Fatal(err)
	}
	if one, two := objects(t, b, "packed"), objects(t, b, "again"); !maps.Equal(one, two) {
		t.Errorf("packing again with other readers gives other objects: %d and %d", len(one), len(two))
	}
	// An archive of images that are all left out is no .tar.
	ones, err := pack(t, src, source, "ones", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(ones) != 10 || ones[5].Key != "" || ones[5].Images != 0 || len(ones[5].Skipped) != 1 || ones[4].Key != "ones/000004.tar" {
		t.Errorf("packed one image an archive: %+v", ones)
	}
	if ok, _ := b.Exists(ctx, "ones/000005.tar"); ok {
		t.Error("an archive of no image was written")
	}
	if got, err := walkAll(t, src, schemas.Dataset{WebDataset: "ones/"}); err != nil || len(got) != len(want) {
		t.Errorf("packed one image an archive, the dataset has %d images (%v), want %d", len(got), err, len(want))
	}

	for _, refused := range []struct {
		ds   schemas.Dataset
		out  string
		per  int
		want string
	}{
		{source, "packed", 4, "empty prefix"},
		{source, "m", 3, "no pack.json"},
		{schemas.Dataset{WebDataset: "packed"}, "x", 3, "packed already"},
		{schemas.Dataset{Prefix: "m/img"}, "m/img/packed/", 3, "inside the dataset's prefix"},
		{schemas.Dataset{Prefix: "s3://b/photos?region=eu&endpoint=x"}, "s3://b/photos/packed?endpoint=x&region=eu", 3, "inside the dataset's prefix"},
	} {
		if err := src.StartPack(ctx, refused.ds, refused.out, refused.per); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), refused.want) {
			t.Errorf("StartPack(%+v, %q, %d): %v, want a refusal (%s)", refused.ds, refused.out, refused.per, err, refused.want)
		}
	}
}

// Packs of two datasets started at once into one prefix: one claims it,
// the other is refused, even when both found it empty before either
// wrote its claim.
func TestStartPackRace(t *testing.T) {
	ctx := context.Background()
	b, _, _ := packWorld(t, 3)
	src := Source{Bucket: b}
	datasets := []schemas.Dataset{{Manifest: "m/list.csv"}, {Prefix: "m/img"}}
	for round, together := range []bool{true, false} {
		out := fmt.Sprintf("out%d", round)
		var arrived sync.WaitGroup
		arrived.Add(len(datasets))
		testHookClaim = func() {
			if together { // both claim only once both found out empty
				arrived.Done()
				arrived.Wait()
			}
		}
		errs := make([]error, len(datasets))
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() { errs[i] = src.StartPack(ctx, datasets[i], out, 3) })
		}
		wg.Wait()
		claim, err := b.ReadAll(ctx, out+"/pack.json")
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range errs {
			mine, _ := json.Marshal(packState{datasets[i], 3})
			switch {
			case err == nil && !bytes.Equal(mine, claim):
				t.Errorf("round %d: a pack of %+v went on into a prefix claimed by %s", round, datasets[i], claim)
			case err != nil && (bytes.Equal(mine, claim) || !errors.Is(err, ErrPackRefused)):
				t.Errorf("round %d: a pack of %+v into a prefix claimed by %s: %v", round, datasets[i], claim, err)
			}
		}
	}
	testHookClaim = func() {}
}

// An archive found whole is kept, and one begun but not finished is
// written anew, so that an interrupted pack ends with the objects of one
// never interrupted; an archive of another dataset is not kept.
func TestPackResumes(t *testing.T) {
	ctx := context.Background()
	b, _, manifest := packWorld(t, 10)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	if _, err := pack(t, src, source, "whole", 3, 3); err != nil {
		t.Fatal(err)
	}
	want := objects(t, b, "whole")

	// The interrupted pack wrote archive 2 whole, and archive 0's .tar but
	// not its sources list,
	if err := src.StartPack(ctx, source, "resumed", 3); err != nil {
		t.Fatal(err)
	}
	items, _ := walkAll(t, src, source)
	if _, err := src.PackArchive(ctx, "resumed", 2, items[6:9], 3, nil); err != nil {
		t.Fatal(err)
	}
	// and a skip list of an image unreadable then.
	b.WriteAll(ctx, "resumed/000000.tar", []byte("torn"), nil)
	b.WriteAll(ctx, "resumed/000000.skipped.csv", []byte("item,uri,reason\n1,m/img/1.png,gone\n"), nil)
	archives, err := pack(t, src, source, "resumed", 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	for n, a := range archives {
		if a.Resumed != (n == 2) {
			t.Errorf("archive %d: resumed %v", n, a.Resumed)
		}
	}
	if got := objects(t, b, "resumed"); !maps.Equal(got, want) {
		t.Errorf("after resuming, the prefix holds %d objects unlike the uninterrupted pack's %d", len(got), len(want))
	}
	// Resuming takes the whole archive's counts from storage.
	again, err := src.PackArchive(ctx, "resumed", 1, items[3:6], 3, nil)
	if err != nil || !again.Resumed || again.Images != 2 || len(again.Skipped) != 1 || again.Skipped[0].Item != 5 || again.Bytes != int64(len(want["000001.tar"])) {
		t.Errorf("archive 1 again: %+v, %v", again, err)
	}

	// An archive of an earlier DCD lists no labels: it is kept on its
	// images alone.
	list, _ := b.ReadAll(ctx, "resumed/000001.sources.csv")
	var short []string
	for _, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Split(line, ",")
		short = append(short, strings.Join(f[:3], ","))
	}
	b.WriteAll(ctx, "resumed/000001.sources.csv", []byte(strings.Join(short, "\n")+"\n"), nil)
	if again, err := src.PackArchive(ctx, "resumed", 1, items[3:6], 3, nil); err != nil || !again.Resumed {
		t.Errorf("archive 1 listed as an earlier DCD lists it: %+v, %v", again, err)
	}

	// A relabelled image: the archive holding it has its old label.
	relabelled := strings.Replace(manifest, "img/7.png,1,fog\n", "img/7.png,2,fog\n", 1)
	b.WriteAll(ctx, "m/list.csv", []byte(relabelled), nil)
	if _, err := pack(t, src, source, "whole", 3, 3); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "changed") {
		t.Errorf("packing again over a relabelled dataset: %v, want a refusal", err)
	}

	// An image skipped for its missing label, given one since: the
	// archive that skipped it is not kept.
	b.WriteAll(ctx, "m/list.csv", []byte(strings.Replace(manifest, "img/7.png,1,fog\n", "img/7.png,,fog\n", 1)), nil)
	if _, err := pack(t, src, source, "unlabelled", 3, 3); err != nil {
		t.Fatal(err)
	}
	if skips, _ := b.ReadAll(ctx, "unlabelled/skipped.csv"); !strings.Contains(string(skips), "m/img/7.png,no label") {
		t.Fatalf("skipped.csv:\n%s\nwant img/7.png skipped for its missing label", skips)
	}
	b.WriteAll(ctx, "m/list.csv", []byte(manifest), nil)
	if _, err := pack(t, src, source, "unlabelled", 3, 3); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "changed") {
		t.Errorf("packing again once the skipped image has a label: %v, want a refusal", err)
	}

	// An image dropped from the manifest moves every later one: the
	// archives written before do not hold what the dataset now cuts.
	b.WriteAll(ctx, "m/list.csv", []byte(strings.Replace(manifest, "img/1.png,1,fog\n", "", 1)), nil)
	if _, err := pack(t, src, source, "resumed", 3, 3); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "changed") {
		t.Errorf("resuming over a changed dataset: %v, want a refusal", err)
	}
}

// A skip list of a width no DCD writes is refused, not read past its rows'
// end (a panic, retried as one).
func TestPackResumeRefusesOddSkipList(t *testing.T) {
	ctx := context.Background()
	b, _, _ := packWorld(t, 10)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	if _, err := pack(t, src, source, "odd", 3, 3); err != nil {
		t.Fatal(err)
	}
	items, _ := walkAll(t, src, source)
	b.WriteAll(ctx, "odd/000001.skipped.csv", []byte("item,uri,reason,label\n5,m/img/missing.png,gone,1\n"), nil)
	if _, err := src.PackArchive(ctx, "odd", 1, items[3:6], 3, nil); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "4 columns") {
		t.Errorf("a skip list of 4 columns: %v, want a refusal", err)
	}
}

// within compares prefixes of one bucket, named by key or by URL.
func TestWithin(t *testing.T) {
	for _, c := range []struct {
		p, dir, self string
		want         bool
	}{
		{"m/img/packed", "m/img", "", true},
		{"m/img", "m/img/", "", true},
		{"m/imgs", "m/img", "", false},
		{"anything", "", "", true},
		{"s3://b/photos/packed?region=eu", "s3://b/photos?region=eu", "", true},
		{"s3://b/photos/packed?a=1&b=2", "s3://b/photos?b=2&a=1", "", true},
		{"s3://b/photos/packed", "s3://c/photos", "", false},
		{"s3://b/photos/packed?region=us", "s3://b/photos?region=eu", "", false},
		{"photos/packed", "s3://b/photos", "", false}, // the workers' bucket is unknown
		// A key and a URL, through the workers' bucket's URL.
		{"photos/packed", "s3://b/photos?region=eu", "s3://b?region=eu", true},
		{"photos/packed", "s3://b/photos", "s3://c", false},
		{"s3://b/photos/packed", "/photos/", "s3://b", true},
		{"file:///srv/st/data/packed", "data", "file:///srv/st", true},
		{"data/packed", "file:///srv/st/data/?metadata=skip", "file:///srv/st/", true},
		{"other/packed", "file:///srv/st/data", "file:///srv/st", false},
		{"file:///srv/st/data2", "data", "file:///srv/st", false},
		// The workers' bucket keeps its objects under a prefix.
		{"imgs/packed", "s3://b/dcd/imgs/", "s3://b?prefix=dcd/", true},
		{"imgs/packed", "s3://b/imgs/", "s3://b?prefix=dcd/", false},
		{"s3://b/dcd/imgs/packed", "imgs", "s3://b?prefix=dcd/", true},
		{"file:///srv/st/p/data/x", "data", "file:///srv/st?prefix=p/", true},
		{"data/x", "file:///srv/st/p/data/", "file:///srv/st?prefix=p/", true},
		{"data/x", "file:///srv/st/data/", "file:///srv/st?prefix=p/", false},
		{"file:///srv/ds/packed?prefix=p/", "file:///srv/ds/", "", false},
		{"file:///p/srv/ds/packed", "file:///srv/ds/?prefix=p/", "", true},
	} {
		if got := within(c.p, c.dir, c.self); got != c.want {
			t.Errorf("within(%q, %q, %q) = %v, want %v", c.p, c.dir, c.self, got, c.want)
		}
	}
}

// What a pack cannot carry is skipped, not retried; an archive whose
// images are all gone since an attempt packed them leaves no .tar behind;
// a dataset shortened by whole archives is refused, not finished with the
// old archives past its end.
func TestPackEdges(t *testing.T) {
	ctx := context.Background()
	b, _, _ := packWorld(t, 7) // 9 items, the 6th and 7th skipped
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}

	// Labels: none, and one too long for a .cls member.
	b.WriteAll(ctx, "m/labels.csv", []byte("uri,label\nimg/0.png,\nimg/1.png,"+strings.Repeat("x", webdataset.MaxText+1)+"\nimg/2.png,2\n"), nil)
	archives, err := pack(t, src, schemas.Dataset{Manifest: "m/labels.csv"}, "labels", 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if a := archives[0]; a.Images != 1 || len(a.Skipped) != 2 || a.Skipped[0].Reason != "no label" || !strings.Contains(a.Skipped[1].Reason, "over") {
		t.Errorf("labels: %+v, want one image packed, two skipped for their labels", a)
	}

	// Gone: an earlier attempt wrote archive 0 (images 0-2), which are gone now.
	if err := src.StartPack(ctx, source, "gone", 3); err != nil {
		t.Fatal(err)
	}
	items, _ := walkAll(t, src, source)
	b.WriteAll(ctx, "gone/000000.tar", []byte("an earlier attempt's"), nil)
	for i := range 3 {
		b.Delete(ctx, fmt.Sprintf("m/img/%d.png", i))
	}
	// None of them read: the workers' access is likelier wrong than every
	// image gone, and an archive marked whole would stay empty.
	_, err = src.PackArchive(ctx, "gone", 0, items[:3], 3, nil)
	if !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "none of the 3 images of gone/000000.tar could be read") {
		t.Fatalf("archive of gone images: %v, want a refusal", err)
	}
	for _, key := range []string{"gone/000000.tar", "gone/000000.sources.csv"} {
		if ok, _ := b.Exists(ctx, key); ok {
			t.Errorf("%s is there after an archive of gone images", key)
		}
	}
	// One of them read: the others are skipped, the earlier attempt's
	// archive replaced.
	b.WriteAll(ctx, "m/img/1.png", []byte(tinyPNG(t, 1)), nil)
	a, err := src.PackArchive(ctx, "gone", 0, items[:3], 3, nil)
	if err != nil || a.Images != 1 || len(a.Skipped) != 2 {
		t.Fatalf("archive of two gone images: %+v, %v", a, err)
	}

	// Refused credentials are not the images': the archive fails, nothing
	// of it is skipped or marked whole.
	refusing := storetest.Hooked(b, &storetest.Hooks{BeforeRead: func(_ context.Context, key string) error {
		if strings.HasPrefix(key, "m/img/") {
			return refusedKey{}
		}
		return nil
	}})
	src3 := Source{Bucket: refusing}
	if err := src3.StartPack(ctx, source, "refused", 3); err != nil {
		t.Fatal(err)
	}
	_, err = src3.PackArchive(ctx, "refused", 1, items[3:6], 3, nil)
	if err == nil || !strings.Contains(err.Error(), "the worker's credentials were refused or not found") {
		t.Fatalf("packing with refused credentials: %v", err)
	}
	if got := objects(t, b, "refused"); got["000001.sources.csv"] != "" || got["000001.skipped.csv"] != "" {
		t.Errorf("packing with refused credentials wrote %v", slices.Sorted(maps.Keys(got)))
	}

	// A sources list no DCD wrote (4 columns) is refused, not read past
	// its rows' end.
	if err := src.StartPack(ctx, source, "foreign", 3); err != nil {
		t.Fatal(err)
	}
	b.WriteAll(ctx, "foreign/000000.sources.csv", []byte("sample,item,uri,label\n000000003,3,m/img/3.png,0\n"), nil)
	if _, err := src.PackArchive(ctx, "foreign", 0, items[3:6], 3, nil); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "4 columns") {
		t.Errorf("a foreign sources list: %v, want a refusal naming its columns", err)
	}

	// A file too large to be an image is skipped unread.
	b.WriteAll(ctx, "m/huge.png", make([]byte, MaxImageBytes+1), nil)
	b.WriteAll(ctx, "m/huge.csv", []byte("uri,label\nhuge.png,1\nimg/1.png,1\n"), nil)
	archives, err = pack(t, src, schemas.Dataset{Manifest: "m/huge.csv"}, "huge", 3, 3)
	if err != nil || archives[0].Images != 1 || len(archives[0].Skipped) != 1 || !strings.Contains(archives[0].Skipped[0].Reason, "over 256 MiB") {
		t.Fatalf("a file over MaxImageBytes: %+v, %v", archives, err)
	}

	// Shortened: the last three items leave the manifest.
	b2, _, manifest2 := packWorld(t, 7)
	src2 := Source{Bucket: b2}
	if _, err := pack(t, src2, source, "short", 3, 3); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(manifest2, "\n")
	b2.WriteAll(ctx, "m/list.csv", []byte(strings.Join(lines[:len(lines)-4], "")), nil)
	if _, err := pack(t, src2, source, "short", 3, 3); !errors.Is(err, ErrPackRefused) || !strings.Contains(err.Error(), "short/000002.tar is past") {
		t.Errorf("packing a shortened dataset again: %v, want a refusal naming short/000002.tar", err)
	}
}

// An archive's readers hold heldBytes of images at most, read and not
// yet written, but for the image the writer waits for, which is never
// kept waiting by those after it: packing with a budget smaller than any
// image writes the same archives, one image at a time.
func TestPackHeldBytes(t *testing.T) {
	ctx := context.Background()
	h := newHeld(100)
	if err := h.reserve(ctx, 1, 60); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := h.reserve(short, 2, 60); err == nil {
		t.Error("image 2 took 60 bytes beside image 1's 60, of 100")
	}
	got := make(chan error)
	go func() { got <- h.reserve(ctx, 2, 60) }()
	h.release(60)
	if err := <-got; err != nil || h.used != 60 {
		t.Errorf("image 2 once image 1 gave its bytes back: %v, %d used", err, h.used)
	}
	if err := h.reserve(ctx, 0, 500); err != nil || h.used != 560 { // the next written: past the budget
		t.Errorf("the image the writer waits for: %v, %d used", err, h.used)
	}

	defer func(n int64) { heldBytes = n }(heldBytes)
	b, _, _ := packWorld(t, 8)
	src := Source{Bucket: b}
	source := schemas.Dataset{Manifest: "m/list.csv"}
	if _, err := pack(t, src, source, "roomy", 3, 4); err != nil {
		t.Fatal(err)
	}
	heldBytes = 1
	if _, err := pack(t, src, source, "tight", 3, 4); err != nil {
		t.Fatal(err)
	}
	if roomy, tight := objects(t, b, "roomy"), objects(t, b, "tight"); !maps.Equal(roomy, tight) {
		t.Errorf("packing one byte held at a time gives other objects: %d and %d", len(roomy), len(tight))
	}
}

// An archive reports its progress every MiB it uploads, a large image's
// too (bufio passes its rest through in one write).
func TestTarStreamMovesEachMiB(t *testing.T) {
	ctx := context.Background()
	b := memBucket(t, nil)
	moves := 0
	ts := newTarStream(ctx, b, "a.tar", func() { moves++ })
	if err := ts.write("s0", "png", make([]byte, 8<<20), "cat", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.close(); err != nil {
		t.Fatal(err)
	}
	if moves < 8 {
		t.Errorf("%d moves for an 8 MiB image, want one a MiB", moves)
	}
}
