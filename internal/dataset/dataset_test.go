package dataset

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"github.com/apache/arrow/go/v15/parquet"
	"github.com/apache/arrow/go/v15/parquet/file"
	"github.com/apache/arrow/go/v15/parquet/pqarrow"
	"gocloud.dev/blob"

	"dcd/internal/store"
	"dcd/schemas"
)

func memBucket(t testing.TB, files map[string]string) *blob.Bucket {
	t.Helper()
	b, err := store.Open(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for k, v := range files {
		if err := b.WriteAll(context.Background(), k, []byte(v), nil); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func walkAll(t *testing.T, s Source, ds schemas.Dataset) ([]Item, error) {
	t.Helper()
	var items []Item
	err := s.Walk(context.Background(), ds, func(it Item) error {
		items = append(items, it)
		return nil
	})
	return items, err
}

func keysAndLabels(items []Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Key+"="+it.Label+"/"+it.Domain)
	}
	return out
}

func TestWalkPrefix(t *testing.T) {
	b := memBucket(t, map[string]string{
		"data/train/cat/1.png":                           "x",
		"data/train/cat/2.jpg":                           "x",
		"data/train/dog/a.webp":                          "x",
		"data/train/README.txt":                          "stray file",
		"data/train/dog/sub/deep.png":                    "nested folder",
		"data/train/dog/.hidden.png":                     "dot file",
		"data/train/dog/.thumbs/t.png":                   "hidden folder",
		"data/train/dog/sub/.x.png":                      "dot file",
		"data/train/cat/Thumbs.db":                       "Windows' thumbnails",
		"data/train/cat/":                                "",
		"data/train/cat/Annotations/1.xml":               "not an image, deeper down",
		"data/train/cat/meta/info.json":                  "not an image, deeper down",
		"data/train/dog/sub/":                            "",
		"data/train/cat/x/desktop.ini":                   "Windows' folder settings",
		"data/train/.ipynb_checkpoints/1-checkpoint.png": "hidden folder",
		"data/other/cat/1.png":                           "x",
	})
	for _, prefix := range []string{"data/train", "data/train/"} {
		items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"data/train/cat/1.png=cat/", "data/train/cat/2.jpg=cat/", "data/train/dog/a.webp=dog/", "data/train/dog/sub/deep.png=dog/"}
		if got := keysAndLabels(items); !slices.Equal(got, want) {
			t.Fatalf("prefix %q: %q, want %q", prefix, got, want)
		}
		for i, it := range items {
			if it.ID != int64(i) || it.Version == "" {
				t.Errorf("item %d: %+v: want ID %d and a version", i, it, i)
			}
		}
	}
	_, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Prefix: "nothing/"})
	if err == nil || !strings.Contains(err.Error(), `"nothing/"`) {
		t.Errorf("empty prefix: %v, want an error naming it", err)
	}
	// A prefix a folder too high (its files two levels under it) names
	// a file it saw and the folder to give instead.
	nest := memBucket(t, map[string]string{
		"nest/.git/objects/ab/cd": "hidden",
		"nest/digits/3/a.png":     "x",
		"nest/digits/7/b.png":     "x",
	})
	for _, prefix := range []string{"nest", "nest/"} {
		_, err = walkAll(t, Source{Bucket: nest}, schemas.Dataset{Prefix: prefix})
		if err == nil || !strings.Contains(err.Error(), `such as "nest/digits/3/a.png"`) || !strings.Contains(err.Error(), `if "nest/digits/" holds the <label> folders`) {
			t.Errorf("prefix %q a folder too high: %v, want a deeper file named and its folder suggested", prefix, err)
		}
	}
	// Classes whose images all sit in folders below them are classes
	// still (torchvision's), where there are several.
	byYear := memBucket(t, map[string]string{"tv/cat/2019/a.jpg": "x", "tv/dog/2020/b.jpg": "x"})
	items, err := walkAll(t, Source{Bucket: byYear}, schemas.Dataset{Prefix: "tv/"})
	if want := []string{"tv/cat/2019/a.jpg=cat/", "tv/dog/2020/b.jpg=dog/"}; err != nil || !slices.Equal(keysAndLabels(items), want) {
		t.Errorf("classes of images by year: %q, %v; want %q", keysAndLabels(items), err, want)
	}
}

// In a file:// bucket, a class folder that is a symbolic link fails the
// walk naming it (the driver does not list into it: the class would be
// left out without a word); a hidden link, or one deeper down not named
// as an image, does not; a link to an image is that image, a dangling one
// an image that will not read (a reject, named).
func TestWalkPrefixLinks(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"pool/cat/1.png", "elsewhere/dogs/1.png", "elsewhere/2.png"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for target, name := range map[string]string{
		"../../elsewhere/2.png": "pool/cat/2.png",
		"../../nowhere.png":     "pool/cat/3.png",
		"../../elsewhere/dogs":  "pool/cat/.thumbs",
		"../../../elsewhere":    "pool/cat/sub/deeper",
	} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := store.Open(context.Background(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Prefix: "pool"})
	if want := []string{"pool/cat/1.png=cat/", "pool/cat/2.png=cat/", "pool/cat/3.png=cat/"}; err != nil || !slices.Equal(keysAndLabels(items), want) {
		t.Errorf("%q, %v; want %q", keysAndLabels(items), err, want)
	}
	if err := os.Symlink("../elsewhere/dogs", filepath.Join(dir, "pool/dog")); err != nil {
		t.Fatal(err)
	}
	_, err = walkAll(t, Source{Bucket: b}, schemas.Dataset{Prefix: "pool"})
	if !errors.Is(err, store.ErrLinkedFolder) || !strings.Contains(err.Error(), `"pool/dog"`) {
		t.Errorf("a class folder that is a link: %v, want ErrLinkedFolder naming it", err)
	}
}

// A prefix given as a file:// URL lists a local folder; items are URLs.
func TestWalkURLPrefix(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"cat/1.png", "dog/2.png"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
	def := memBucket(t, nil)
	bs := &store.Buckets{}
	defer bs.Close()
	items, err := walkAll(t, Source{Bucket: def, Buckets: bs}, schemas.Dataset{Prefix: "file://" + dir})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"file://" + dir + "/cat/1.png=cat/", "file://" + dir + "/dog/2.png=dog/"}
	if got := keysAndLabels(items); !slices.Equal(got, want) {
		t.Fatalf("%q, want %q", got, want)
	}
	data, err := bs.ReadAll(context.Background(), def, items[0].Key)
	if err != nil || string(data) != "x" {
		t.Fatalf("read %s: %q %v", items[0].Key, data, err)
	}
}

func TestWalkCSVManifest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "elsewhere.png"), []byte("x"), 0o644)
	manifest := "URI , Label,domain\n" +
		"img/1.png,cat,clean\n" + // relative to the manifest's folder
		"/shared/2.png,dog,blur\n" + // a key in the worker's bucket
		"file://" + dir + "/elsewhere.png,cat,\n" + // another bucket
		"\"s3://bucket/a,b.png?region=us-east-1\",dog,fog\n" +
		",,\n , ,\n" // the blank rows Excel saves under a table
	b := memBucket(t, map[string]string{"sets/pool/manifest.csv": manifest})
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "sets/pool/manifest.csv"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"sets/pool/img/1.png=cat/clean",
		"shared/2.png=dog/blur",
		"file://" + dir + "/elsewhere.png=cat/",
		"s3://bucket/a,b.png?region=us-east-1=dog/fog",
	}
	if got := keysAndLabels(items); !slices.Equal(got, want) {
		t.Fatalf("%q\nwant %q", got, want)
	}
	// Shard manifests keep URLs intact.
	s := &Shard{Items: items}
	back, err := ParseShard("s", s.Marshal())
	if err != nil || !slices.Equal(keysAndLabels(back.Items), want) {
		t.Fatalf("shard round trip: %v %q", err, keysAndLabels(back.Items))
	}
	// ManifestURI writes what the manifest reader reads back, a key that
	// begins with "/" (an S3 key may) too.
	var sb strings.Builder
	sb.WriteString("uri,label\n")
	keys := []string{items[1].Key, items[2].Key, "/odd/3.png"}
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s,cat\n", ManifestURI(k))
	}
	b.WriteAll(context.Background(), "runs/x/debug_train.csv", []byte(sb.String()), nil)
	again, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "runs/x/debug_train.csv"})
	if err != nil || len(again) != 3 || again[0].Key != keys[0] || again[1].Key != keys[1] || again[2].Key != keys[2] {
		t.Fatalf("ManifestURI round trip: %v %+v", err, again)
	}
}

func TestWalkManifestErrors(t *testing.T) {
	b := memBucket(t, map[string]string{
		"no-label.csv":  "uri,class\nx.png,cat\n",
		"empty-uri.csv": "uri,label\nx.png,cat\n,dog\n",
		"escapes.csv":   "uri,label\n../../x.png,cat\n",
		"bad-url.csv":   "uri,label\nfile://host/x.png,cat\n",
		"header.csv":    "uri,label\n",
		"twice.csv":     "uri,Label,label \nx.png,cat,dog\n",
		// A quote left open: the rest of the file would be one field.
		"open.csv": "uri,label\n\"x.png,cat\n" + strings.Repeat("y.png,dog\n", 200_000),
		// Binary files named otherwise: a Parquet file, a gzipped CSV.
		"list.pq":        "PAR1\x15\x04\x15\x80\x01",
		"list.csv.gz":    "\x1f\x8b\x08\x00\x00\x00\x00\x00",
		"empty.csv":      "",
		"pool/cat/1.png": "x",
		// Lines ending in CR alone; UTF-16 with and without its mark.
		"mac.csv":     "uri,label\rx.png,cat\ry.png,dog\r",
		"utf16.csv":   "\xff\xfeu\x00r\x00i\x00,\x00l\x00",
		"utf16be.csv": "\x00u\x00r\x00i\x00,\x00l",
		// JSON Lines, and JSON, named as a manifest.
		"pool.jsonl": `{"uri": "x.png", "label": "cat"}` + "\n",
		"pool.json":  `[{"uri": "x.png", "label": "cat"}]`,
		// JSON after a byte-order mark and blank lines, which CSV skips.
		"spaced.json": "\ufeff\r\n\n  " + `{"uri": "x.png", "label": "cat"}`,
		// Columns separated otherwise than by commas.
		"semicolon.csv": "uri;label\nx.png;cat\n",
		// Hugging Face's ImageFolder metadata, and a "class" column.
		"metadata.csv": "file_name,class\n1.png,cat\n",
		"tab.csv":      "uri\tlabel\nx.png\tcat\n",
	})
	for key, want := range map[string]string{
		"no-label.csv":    "must include uri and label",
		"empty-uri.csv":   "line 3: empty uri",
		"escapes.csv":     "leaves the bucket",
		"bad-url.csv":     "file URL has three slashes",
		"header.csv":      "lists no images",
		"missing.csv":     "not found",
		"twice.csv":       `columns 2 and 3 are both "label"`,
		"open.csv":        "the row after line 1: a row longer than",
		"list.pq":         "a Parquet file: name it *.parquet",
		"list.csv.gz":     "a gzip file: decompress it",
		"empty.csv":       "the file is empty: a manifest begins with a header line",
		"mac.csv":         "its lines end in CR alone",
		"utf16.csv":       "a UTF-16 file",
		"utf16be.csv":     "a UTF-16 file",
		"pool.jsonl":      "a JSON or JSON Lines file",
		"pool.json":       "a JSON or JSON Lines file",
		"spaced.json":     "a JSON or JSON Lines file",
		"metadata.csv":    `must include uri and label: rename "file_name" to uri and "class" to label`,
		"semicolon.csv":   `whose names are separated by ";": a manifest's columns are separated by commas`,
		"tab.csv":         `whose names are separated by "\t"`,
		"pool":            "is a folder, not a manifest file",
		"pool/":           "is a folder, not a manifest file",
		"parts/*.parquet": "DCD expands no wildcards or braces",
	} {
		_, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: key})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: %v, want an error naming it and saying %q", key, err, want)
		}
	}
}

// A folder given as a file:// bucket's manifest is said to be one, not a
// stat of the name fileblob escapes its trailing "/" to.
func TestManifestFolderInFileBucket(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "mine", "pool", "cat"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mine", "pool", "cat", "1.png"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := store.Open(context.Background(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, key := range []string{"mine/pool", "mine/pool/"} {
		_, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: key})
		if err == nil || !strings.Contains(err.Error(), "is a folder, not a manifest file") || strings.Contains(err.Error(), "0x2f") {
			t.Errorf("manifest %q: %v, want it said a folder", key, err)
		}
	}
}

// A manifest's version column versions its images: a shard whose image
// changes version has another digest, so its cached features are not
// reused; without the column, versions are empty and keys alone count.
func TestManifestVersions(t *testing.T) {
	b := memBucket(t, map[string]string{
		"v1.csv":   "version,uri,label,domain\n\"etag-1\",a.png,cat,fog\nx9,b.png,dog,\n",
		"v2.csv":   "version,uri,label,domain\n\"etag-2\",a.png,cat,fog\nx9,b.png,dog,\n",
		"none.csv": "uri,label\na.png,cat\nb.png,dog\n",
	})
	digest := func(key string) string {
		t.Helper()
		items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: key})
		if err != nil {
			t.Fatal(err)
		}
		return (&Shard{Items: items}).Digest()
	}
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "v1.csv"})
	if err != nil || len(items) != 2 || items[0].Version != "etag-1" || items[1].Version != "x9" || items[0].Domain != "fog" || items[1].Label != "dog" {
		t.Fatalf("v1.csv: %v %+v", err, items)
	}
	if items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "none.csv"}); err != nil || items[0].Version != "" {
		t.Fatalf("no version column: %v %+v", err, items)
	}
	if d1, d2, d0 := digest("v1.csv"), digest("v2.csv"), digest("none.csv"); d1 == d2 || d1 == d0 {
		t.Errorf("digests %s (v1), %s (v2), %s (none): want a new version to give a new digest", d1, d2, d0)
	} else if d1 != digest("v1.csv") {
		t.Errorf("one manifest read twice gave two digests")
	}
}

// parquetManifest writes columns of strings (or int64 labels), and int64
// versions, as Parquet, in row groups of rowGroup rows; nil domains or
// versions: no such column.
func parquetManifest(t testing.TB, uris []string, labels any, domains []string, versions []int64, rowGroup int64, opts ...parquet.WriterProperty) []byte {
	t.Helper()
	mem := memory.NewGoAllocator()
	fields := []arrow.Field{{Name: "uri", Type: arrow.BinaryTypes.String, Nullable: true}}
	switch labels.(type) {
	case []string:
		fields = append(fields, arrow.Field{Name: "label", Type: arrow.BinaryTypes.String})
	case []int64:
		fields = append(fields, arrow.Field{Name: "label", Type: arrow.PrimitiveTypes.Int64})
	}
	if domains != nil {
		fields = append(fields, arrow.Field{Name: "domain", Type: arrow.BinaryTypes.String})
	}
	if versions != nil {
		fields = append(fields, arrow.Field{Name: "version", Type: arrow.PrimitiveTypes.Int64})
	}
	sc := arrow.NewSchema(fields, nil)
	rb := array.NewRecordBuilder(mem, sc)
	defer rb.Release()
	for i, u := range uris {
		if u == "" {
			rb.Field(0).(*array.StringBuilder).AppendNull()
		} else {
			rb.Field(0).(*array.StringBuilder).Append(u)
		}
		switch l := labels.(type) {
		case []string:
			rb.Field(1).(*array.StringBuilder).Append(l[i])
		case []int64:
			rb.Field(1).(*array.Int64Builder).Append(l[i])
		}
		if domains != nil {
			rb.Field(2).(*array.StringBuilder).Append(domains[i])
		}
		if versions != nil {
			rb.Field(len(fields) - 1).(*array.Int64Builder).Append(versions[i])
		}
	}
	return recordParquet(t, mem, sc, rb, rowGroup, opts...)
}

// recordParquet writes the record rb builds, of schema sc, as a Parquet
// file in row groups of rowGroup rows.
func recordParquet(t testing.TB, mem memory.Allocator, sc *arrow.Schema, rb *array.RecordBuilder, rowGroup int64, opts ...parquet.WriterProperty) []byte {
	t.Helper()
	rec := rb.NewRecord()
	defer rec.Release()
	tbl := array.NewTableFromRecords(sc, []arrow.Record{rec})
	defer tbl.Release()
	var buf bytes.Buffer
	if err := pqarrow.WriteTable(tbl, &buf, rowGroup, parquet.NewWriterProperties(append(opts, parquet.WithAllocator(mem))...), pqarrow.DefaultWriterProps()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A damaged Parquet manifest is an error naming it, never a crash: each
// byte of a small one flipped. The Parquet reader trusts a file's metadata
// (row counts, offsets, which fields are set); a panic on a goroutine of
// its own would crash the worker, and every worker the planning was tried
// on after it.
func TestDamagedParquetManifest(t *testing.T) {
	data := parquetManifest(t, []string{"a.png", "b.png", "c.png"}, []int64{1, 2, 3}, []string{"d", "e", "f"}, []int64{7, 8, 9}, 2)
	b := memBucket(t, nil)
	for at := range data {
		for _, flip := range []byte{0x01, 0xff} {
			bad := slices.Clone(data)
			bad[at] ^= flip
			if err := walkDamaged(b, bad); err != nil && !strings.Contains(err.Error(), "m.parquet") {
				t.Fatalf("byte %d ^ %#x: %v, want an error naming the manifest", at, flip, err)
			}
		}
	}
}

// FuzzParquetManifest: go test ./internal/dataset -run - -fuzz
// FuzzParquetManifest -fuzzminimizetime 0 (the minimizer hangs here).
func FuzzParquetManifest(f *testing.F) {
	f.Add(parquetManifest(f, []string{"a.png", "", "c.png"}, []string{"x", "y", "z"}, []string{"d", "e", "f"}, []int64{1, 2, 3}, 2))
	f.Add(parquetManifest(f, []string{"a.png", "b.png"}, []int64{3, 11}, nil, nil, 100))
	b, err := store.Open(context.Background(), "mem://")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := walkDamaged(b, data); err != nil && !strings.Contains(err.Error(), "m.parquet") {
			t.Fatalf("%v, want an error naming the manifest", err)
		}
	})
}

// walkDamaged walks data as the Parquet manifest m.parquet in b.
func walkDamaged(b *blob.Bucket, data []byte) error {
	ctx := context.Background()
	if err := b.WriteAll(ctx, "m.parquet", data, nil); err != nil {
		return err
	}
	return Source{Bucket: b}.Walk(ctx, schemas.Dataset{Manifest: "m.parquet"}, func(Item) error { return nil })
}

// A Parquet manifest of more rows than one batch and one row group streams
// in file order, with relative, /key and URL uris.
func TestWalkParquetManifest(t *testing.T) {
	const n = 3*parquetBatch + 17
	var uris, labels, domains []string
	for i := 0; i < n; i++ {
		switch i % 3 {
		case 0:
			uris = append(uris, fmt.Sprintf("img/%06d.png", i))
		case 1:
			uris = append(uris, fmt.Sprintf("/shared/%06d.png", i))
		default:
			uris = append(uris, fmt.Sprintf("s3://other/%06d.png?region=us-east-1", i))
		}
		labels = append(labels, fmt.Sprint("class", i%7))
		domains = append(domains, fmt.Sprint("d", i%2))
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	b := memBucket(t, map[string]string{"pool/manifest.parquet": string(parquetManifest(t, uris, labels, domains, nil, 10000))})
	items, err := walkAll(t, Source{Bucket: b, Mem: mem}, schemas.Dataset{Manifest: "pool/manifest.parquet"})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != n {
		t.Fatalf("%d items, want %d", len(items), n)
	}
	for i, it := range items {
		want := "pool/" + uris[i]
		switch i % 3 {
		case 1:
			want = strings.TrimPrefix(uris[i], "/")
		case 2:
			want = uris[i]
		}
		if it.ID != int64(i) || it.Key != want || it.Label != labels[i] || it.Domain != domains[i] {
			t.Fatalf("item %d: %+v, want key %q label %q domain %q", i, it, want, labels[i], domains[i])
		}
	}

	// Integer labels (class indices) and versions read as their decimal
	// text; no domain.
	b.WriteAll(context.Background(), "ints.parquet", parquetManifest(t, []string{"a.png", "b.png"}, []int64{3, 11}, nil, []int64{1764000000, 1764000007}, 100), nil)
	items, err = walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "ints.parquet"})
	if err != nil || len(items) != 2 || items[0].Label != "3" || items[1].Label != "11" || items[1].Domain != "" ||
		items[0].Version != "1764000000" || items[1].Version != "1764000007" {
		t.Fatalf("int labels and versions: %v %+v", err, items)
	}

	// A null uri is an error naming the row.
	b.WriteAll(context.Background(), "nulls.parquet", parquetManifest(t, []string{"a.png", ""}, []string{"x", "y"}, nil, nil, 100), nil)
	_, err = walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "nulls.parquet"})
	if err == nil || !strings.Contains(err.Error(), "nulls.parquet") || !strings.Contains(err.Error(), "row 2: null uri") {
		t.Fatalf("null uri: %v", err)
	}

	// An empty file, and not a Parquet file at all.
	b.WriteAll(context.Background(), "empty.parquet", nil, nil)
	if _, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "empty.parquet"}); err == nil || !strings.Contains(err.Error(), `"empty.parquet": parquet: file too small`) {
		t.Fatalf("empty: %v", err)
	}
	b.WriteAll(context.Background(), "fake.parquet", []byte("uri,label\nx.png,cat\n"), nil)
	if _, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "fake.parquet"}); err == nil || !strings.Contains(err.Error(), "fake.parquet") {
		t.Fatalf("not parquet: %v", err)
	}
}

// A manifest at a URL resolves relative uris in its own bucket, a
// WebDataset member's archive too; a byte-order mark before a quoted
// header, and spaces around labels and domains, are no part of them.
func TestWalkURLManifest(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "m"), 0o755)
	os.WriteFile(filepath.Join(dir, "m", "list.csv"), []byte("\ufeff\"uri\",\"label\",\"domain\"\nimgs/1.png, cat ,fog \n/in-worker-bucket.png,dog,\n"+
		"shards/0001.tar#x 50%.png@1536+812,cat,\n"), 0o644)
	items, err := walkAll(t, Source{Bucket: memBucket(t, nil)}, schemas.Dataset{Manifest: "file://" + dir + "/m/list.csv"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"file://" + dir + "/m/imgs/1.png=cat/fog", "in-worker-bucket.png=dog/", "file://" + dir + "/m/shards/0001.tar#x 50%.png@1536+812=cat/"}
	if got := keysAndLabels(items); !slices.Equal(got, want) {
		t.Fatalf("%q, want %q", got, want)
	}
}

// tarOf packs files (name, content pairs, in order) as a tar archive.
func tarOf(t *testing.T, files ...string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(files); i += 2 {
		if err := tw.WriteHeader(&tar.Header{Name: files[i], Mode: 0o644, Size: int64(len(files[i+1]))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(files[i+1]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestWalkWebDataset(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "pool"), 0o755)
	os.WriteFile(filepath.Join(dir, "pool", "b.tar"), []byte(tarOf(t,
		"c/3.jpg", "image three", "c/3.cls", "cat\n", "c/3.json", "{}", "notes.txt", "no image: skipped")), 0o644)
	def := memBucket(t, map[string]string{
		"pool/a.tar": tarOf(t, "1.png", "image one", "1.cls", "dog", "1.domain", "fog",
			"2.png", "image two", "2.cls", " cat "),
		"pool/readme.md": "not an archive",
	})
	bs := &store.Buckets{}
	defer bs.Close()
	src := Source{Bucket: def, Buckets: bs}

	check := func(items []Item, want []string, images []string) {
		t.Helper()
		var got []string
		for _, it := range items {
			got = append(got, it.Label+"/"+it.Domain)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("labels/domains %q, want %q", got, want)
		}
		for i, it := range items {
			if it.ID != int64(i) || it.Version == "" {
				t.Errorf("item %d: %+v", i, it)
			}
			data, err := bs.ReadAll(context.Background(), def, it.Key)
			if err != nil || string(data) != images[i] {
				t.Errorf("read %s: %q, %v; want %q", it.Key, data, err, images[i])
			}
		}
	}
	// Keys in the worker's bucket, and URLs of another bucket.
	items, err := walkAll(t, src, schemas.Dataset{WebDataset: "pool"})
	if err != nil {
		t.Fatal(err)
	}
	check(items, []string{"dog/fog", "cat/"}, []string{"image one", "image two"})
	if !strings.HasPrefix(items[0].Key, "pool/a.tar#1.png@") {
		t.Errorf("key %q", items[0].Key)
	}
	items, err = walkAll(t, src, schemas.Dataset{WebDataset: "file://" + dir + "/pool/b.tar"})
	if err != nil {
		t.Fatal(err)
	}
	check(items, []string{"cat/"}, []string{"image three"})

	// The sample list is cached per archive version: a second walk reads
	// the index (here doctored) instead of the archive.
	archive := "pool/a.tar"
	key := IndexKey(archive, items0Version(t, src, archive))
	idx, err := def.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatalf("no index cached at %s: %v", key, err)
	}
	if err := def.WriteAll(context.Background(), key, bytes.Replace(idx, []byte(",dog,"), []byte(",wolf,"), 1), nil); err != nil {
		t.Fatal(err)
	}
	items, err = walkAll(t, src, schemas.Dataset{WebDataset: archive})
	if err != nil || items[0].Label != "wolf" {
		t.Fatalf("walk with a cached index: %v, %v", keysAndLabels(items), err)
	}
	// A damaged index is rebuilt from the archive.
	def.WriteAll(context.Background(), key, []byte("junk"), nil)
	items, err = walkAll(t, src, schemas.Dataset{WebDataset: archive})
	if err != nil {
		t.Fatal(err)
	}
	check(items, []string{"dog/fog", "cat/"}, []string{"image one", "image two"})
}

// items0Version is the version Walk gives the items of archive.
func items0Version(t *testing.T, src Source, archive string) string {
	t.Helper()
	items, err := walkAll(t, src, schemas.Dataset{WebDataset: archive})
	if err != nil || len(items) == 0 {
		t.Fatalf("%s: %v", archive, err)
	}
	return items[0].Version
}

func TestWalkWebDatasetErrors(t *testing.T) {
	def := memBucket(t, map[string]string{
		"nolabel/a.tar":     tarOf(t, "1.png", "x", "2.png", "y", "2.cls", " "),
		"empty/x.txt":       "no archives here",
		"gz/a.tar":          tarOf(t, "1.png", "x", "1.cls", "dog"),
		"gz/b.tar.gz":       "compressed",
		"xz/a.tar":          tarOf(t, "1.png", "x", "1.cls", "dog"),
		"xz/b.tar.xz":       "compressed",
		"sums/a.tar":        tarOf(t, "1.png", "x", "1.cls", "dog"),
		"sums/a.tar.sha256": "not an archive",
		"v1.tar.d/a.tar":    tarOf(t, "1.png", "x", "1.cls", "dog"),
		"zst/c.tzst":        "compressed",
		"zstd/a.tar":        tarOf(t, "1.png", "x", "1.cls", "dog"),
		"zstd/b.tar.zstd":   "compressed",
		"named/a.tar.bz2":   "compressed",
		"one/a.tar":         tarOf(t, "1.png", "x", "1.cls", "dog"),
		"one/a.tar.old.tar": "not the archive named",
	})
	for ds, want := range map[string]string{
		"nolabel/":                  `webdataset "nolabel/": none of its 2 samples with an image has a .cls label`,
		"empty/":                    `webdataset "empty/" holds no samples`,
		"sums/shard-{000..009}.tar": `holds no samples with an image (0 .tar archives): DCD expands no wildcards or braces`,
		"gz/":                       `gz/b.tar.gz is not an uncompressed .tar`,
		"xz/":                       `xz/b.tar.xz is not an uncompressed .tar`,
		"zst/":                      `zst/c.tzst is not an uncompressed .tar`,
		"zstd/":                     `zstd/b.tar.zstd is not an uncompressed .tar`,
		// One archive named, compressed: said, not read as a prefix.
		"named/a.tar.bz2": `webdataset "named/a.tar.bz2" is not an uncompressed .tar`,
	} {
		_, err := walkAll(t, Source{Bucket: def}, schemas.Dataset{WebDataset: ds})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error containing %s", ds, err, want)
		}
	}
	// A sample without a label is one, as a manifest's row without one.
	some := memBucket(t, map[string]string{"some/a.tar": tarOf(t, "1.png", "x", "2.png", "y", "2.cls", "dog", "3.png", "z", "3.cls", "")})
	if items, err := walkAll(t, Source{Bucket: some}, schemas.Dataset{WebDataset: "some/"}); err != nil ||
		len(items) != 3 || items[0].Label != "" || items[1].Label != "dog" || items[2].Label != "" {
		t.Errorf("some/: %+v, %v; want three samples, the second labeled dog", items, err)
	}
	// Files beside the archives that are no compressed archive are
	// passed over, and a folder's name may hold ".tar.".
	for _, ds := range []string{"sums/", "v1.tar.d/"} {
		if items, err := walkAll(t, Source{Bucket: def}, schemas.Dataset{WebDataset: ds}); err != nil || len(items) != 1 {
			t.Errorf("%s: %d items, %v; want its archive's one sample", ds, len(items), err)
		}
	}
	// An archive named is that archive, not every key it begins.
	if items, err := walkAll(t, Source{Bucket: def}, schemas.Dataset{WebDataset: "one/a.tar"}); err != nil || len(items) != 1 {
		t.Errorf("one/a.tar: %d items, %v; want its one sample", len(items), err)
	}
}

// Archives are read ahead, ArchivesAhead at once, yet their samples come
// in key order, and a damaged archive fails the walk after the samples
// before it, naming it, not one read ahead of it.
func TestWalkWebDatasetInOrder(t *testing.T) {
	objects := map[string]string{}
	const n, bad = 3 * ArchivesAhead, 2 * ArchivesAhead
	for i := range n {
		label := fmt.Sprint(i)
		members := []string{"1.png", "x", "1.cls", label, "2.png", "y", "2.cls", label}
		if i >= bad {
			members = append(members, "1.jpg", "reappears") // damaged from here on
		}
		objects[fmt.Sprintf("pool/%04d.tar", i)] = tarOf(t, members...)
	}
	src := Source{Bucket: memBucket(t, objects)}
	var got []string
	err := src.Walk(context.Background(), schemas.Dataset{WebDataset: "pool/"}, func(it Item) error {
		if it.ID != int64(len(got)) {
			t.Fatalf("item %d has ID %d", len(got), it.ID)
		}
		got = append(got, it.Label)
		return nil
	})
	want := fmt.Sprintf("pool/%04d.tar", bad)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("walk: %v, want an error naming %s", err, want)
	}
	if len(got) != 2*bad {
		t.Fatalf("%d samples before the error, want %d", len(got), 2*bad)
	}
	for i, l := range got {
		if l != fmt.Sprint(i/2) {
			t.Fatalf("sample %d has label %q, want %d: out of order", i, l, i/2)
		}
	}
	// A walk its callback ends returns the callback's error.
	stop := errors.New("enough")
	if err := src.Walk(context.Background(), schemas.Dataset{WebDataset: "pool/"}, func(Item) error { return stop }); err != stop {
		t.Errorf("walk ended by its callback: %v, want its error", err)
	}
}

// A shard's digest names its features cache entry, so it must hash the
// same bytes as it always has: each item's key, a NUL, its version and a
// newline. Enough items to fill the hashing buffer several times, keys
// and versions of every length up to past its size included.
func TestShardDigestBytes(t *testing.T) {
	var s Shard
	for i := range 3000 {
		s.Items = append(s.Items, Item{ID: int64(i), Key: fmt.Sprintf("pool/%d.png", i), Version: strings.Repeat("v", i%7), Label: "ignored"})
	}
	s.Items = append(s.Items, Item{Key: strings.Repeat("k", 40<<10), Version: "1"}, Item{Key: "last", Version: strings.Repeat("x", 33<<10)})
	var want []byte
	for _, it := range s.Items {
		want = fmt.Appendf(want, "%s\x00%s\n", it.Key, it.Version)
	}
	sum := sha256.Sum256(want)
	if got := s.Digest(); got != hex.EncodeToString(sum[:])[:32] {
		t.Fatalf("digest %s, want %s", got, hex.EncodeToString(sum[:])[:32])
	}
	relabelled := Shard{Items: slices.Clone(s.Items)}
	relabelled.Items[0].Label, relabelled.Items[0].ID = "other", 99
	if relabelled.Digest() != s.Digest() {
		t.Error("the digest depends on labels or ids")
	}
	back, err := ParseShard("s", s.Marshal())
	if err != nil || !slices.Equal(back.Items, s.Items) {
		t.Fatalf("round trip: %v, equal %v", err, err == nil && slices.Equal(back.Items, s.Items))
	}
}

// Manifests Marshal wrote parse back to their items whether their fields
// needed quoting or not; the plain ones without the CSV reader.
func TestParseShardPlain(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	alphabet := []rune("ab/._-0é\\ ,\"\n")
	field := func(n int) string {
		r := make([]rune, rng.IntN(n))
		for i := range r {
			r[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(r)
	}
	plain := 0
	for range 300 {
		var s Shard
		for i := range rng.IntN(5) {
			s.Items = append(s.Items, Item{ID: int64(i) - 2, Key: field(9), Label: field(3), Domain: field(2), Version: field(3)})
		}
		data := s.Marshal()
		back, err := ParseShard("s", data)
		if err != nil || !slices.Equal(back.Items, s.Items) {
			t.Fatalf("%q: %v, %+v; want %+v", data, err, back, s.Items)
		}
		if _, ok := parsePlain(data); ok {
			plain++
		} else if !bytes.ContainsAny(data, "\"\r") {
			t.Fatalf("%q: unquoted, yet not parsed plainly", data)
		}
	}
	if plain < 30 {
		t.Errorf("%d manifests of 300 parsed plainly", plain)
	}
}

// BenchmarkParseShard parses a pool shard's manifest of 2,000 images,
// plainly (ParseShard) and through the CSV reader (parseCSV).
func BenchmarkParseShard(b *testing.B) {
	var s Shard
	for i := range 2000 {
		s.Items = append(s.Items, Item{ID: int64(500000 + i), Key: fmt.Sprintf("pool/%d/%07d.png", i%10, 500000+i), Label: fmt.Sprint(i % 10), Domain: "day", Version: "1764000000"})
	}
	data := s.Marshal()
	for name, parse := range map[string]func(string, []byte) (*Shard, error){"plain": ParseShard, "csv": parseCSV} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				if _, err := parse("s", data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestParseShardErrors(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{"", `dataset: shard "s": header must be ["id" "key" "label" "domain" "version"]`},
		{"id,key,label\n", `header must be`},
		{"\"id,key,label,domain,version\"\n", `header must be`},
		{"id,key,label,domain,version\n1,a.png,cat,,\n2,b.png\n", `record on line 3: wrong number of fields`},
		{"id,key,label,domain,version\n1,a.png,cat,,\nx,b.png,dog,,\n", `shard "s" row 2: id "x"`},
	} {
		if _, err := ParseShard("s", []byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
	s, err := ParseShard("s", []byte("id,key,label,domain,version\n"))
	if err != nil || len(s.Items) != 0 {
		t.Errorf("an empty shard: %v, %d items", err, len(s.Items))
	}
}

// An object's version changes with its MD5 where the store lists one, even
// when its size and time do not.
func TestVersionHasMD5(t *testing.T) {
	at := time.Unix(1700000000, 0)
	a := &blob.ListObject{Key: "a.tar", Size: 10240, ModTime: at, MD5: []byte{1, 2}}
	b := &blob.ListObject{Key: "a.tar", Size: 10240, ModTime: at, MD5: []byte{3, 4}}
	if version(a) == version(b) {
		t.Errorf("two contents of one size and time share the version %s", version(a))
	}
	if version(&blob.ListObject{Size: 1, ModTime: at}) != "1:1700000000000000000" {
		t.Errorf("without an MD5: %s", version(&blob.ListObject{Size: 1, ModTime: at}))
	}
}

// A CSV manifest saved by Excel as "CSV UTF-8" begins with a byte-order
// mark: its header still names uri and label.
func TestManifestWithByteOrderMark(t *testing.T) {
	b := memBucket(t, map[string]string{"m/list.csv": "\ufeffuri,label\nimg/0.png,cat\n", "m/img/0.png": "x"})
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m/list.csv"})
	if err != nil || len(items) != 1 || items[0].Key != "m/img/0.png" || items[0].Label != "cat" {
		t.Errorf("items %+v, %v", items, err)
	}
}

// A manifest may name an archive member by URL whatever its name holds:
// the member's name is not part of the archive's URL.
func TestResolveMemberURL(t *testing.T) {
	for _, uri := range []string{"file:///srv/a.tar#50%off.png@512+3", "s3://b/p/a.tar?region=eu#x y%.png@0+9"} {
		if got, err := resolve(uri, "m", ""); err != nil || got != uri {
			t.Errorf("resolve(%q) = %q, %v", uri, got, err)
		}
	}
	if _, err := resolve("s3://b/img#1.jpg", "m", ""); err == nil {
		t.Error(`resolve("s3://b/img#1.jpg"): a '#' that would cut the key passed`)
	}
}

// A CSV's spaces around a uri are not the key's, and columns DCD does not
// read may repeat a name.
func TestWalkCSVSpacesAndOtherColumns(t *testing.T) {
	b := memBucket(t, map[string]string{"m.csv": "notes,label, uri ,notes\nx, cat ,  cat/1.jpg ,y\n"})
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.csv"})
	if err != nil {
		t.Fatal(err)
	}
	if got := keysAndLabels(items); !slices.Equal(got, []string{"cat/1.jpg=cat/"}) {
		t.Errorf("%q, want cat/1.jpg=cat/", got)
	}
}

// A Parquet manifest's nested columns (lists, whose leaves are all named
// "element"; an image struct's "bytes") are not its columns: uri and
// label are read beside them.
func TestParquetNestedColumns(t *testing.T) {
	mem := memory.NewGoAllocator()
	sc := arrow.NewSchema([]arrow.Field{
		{Name: "uri", Type: arrow.BinaryTypes.String},
		{Name: "label", Type: arrow.BinaryTypes.String},
		{Name: "bboxes", Type: arrow.ListOf(arrow.PrimitiveTypes.Float32)},
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String)},
	}, nil)
	rb := array.NewRecordBuilder(mem, sc)
	defer rb.Release()
	rb.Field(0).(*array.StringBuilder).Append("cat/1.jpg")
	rb.Field(1).(*array.StringBuilder).Append("cat")
	boxes := rb.Field(2).(*array.ListBuilder)
	boxes.Append(true)
	boxes.ValueBuilder().(*array.Float32Builder).Append(0.5)
	tags := rb.Field(3).(*array.ListBuilder)
	tags.Append(true)
	tags.ValueBuilder().(*array.StringBuilder).Append("night")
	b := memBucket(t, map[string]string{"m.parquet": string(recordParquet(t, mem, sc, rb, 10))})
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"})
	if err != nil {
		t.Fatal(err)
	}
	if got := keysAndLabels(items); !slices.Equal(got, []string{"cat/1.jpg=cat/"}) {
		t.Errorf("%q, want cat/1.jpg=cat/", got)
	}
}

// A label folder macOS named (decomposed: "e" and a combining accent) is
// the class a config types (composed "é"): labels are read composed.
func TestLabelsComposed(t *testing.T) {
	decomposed, composed := "cafe\u0301", "caf\u00e9"
	b := memBucket(t, map[string]string{
		"d/" + decomposed + "/1.png": "x",
		"m.csv":                      "uri,label\n1.png, " + decomposed + "\n",
	})
	for _, ds := range []schemas.Dataset{{Prefix: "d/"}, {Manifest: "m.csv"}} {
		items, err := walkAll(t, Source{Bucket: b}, ds)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 1 || items[0].Label != composed {
			t.Errorf("%+v: labels %q, want %q", ds, keysAndLabels(items), composed)
		}
	}
}

// Classes finds a label's class by name, the first of a repeated name,
// and lists thousands of classes in an error by their first few.
func TestClasses(t *testing.T) {
	var names []string
	for i := range 40000 {
		names = append(names, fmt.Sprintf("class-%05d", i))
	}
	names = append(names, "class-00007")
	c := NewClasses(names)
	if c.Index("class-39999") != 39999 || c.Index("class-00007") != 7 || c.Index("dog") != -1 {
		t.Errorf("Index: %d %d %d, want 39999 7 -1", c.Index("class-39999"), c.Index("class-00007"), c.Index("dog"))
	}
	if s := c.String(); len(s) > 200 || !strings.HasSuffix(s, "and 39991 more") {
		t.Errorf("String: %s", s)
	}
	if s := NewClasses([]string{"a", "b"}).String(); s != `["a" "b"]` {
		t.Errorf("String of two: %s", s)
	}
}

// A Parquet manifest whose file is small but whose values are not (a
// label repeated on every row, dictionary-encoded) is read, and a value
// past the cap fails the walk naming its row, where it once took a
// batch's rows × its size of memory (8,192 × 256 KiB) and overflowed
// Arrow's 32-bit offsets; a column too large a row, or a dictionary past
// the walk's memory, is refused.
func TestParquetManifestValuesBounded(t *testing.T) {
	const rows = 4096
	uris, labels := make([]string, rows), make([]string, rows)
	for i := range uris {
		uris[i] = fmt.Sprintf("img/%05d.png", i)
		labels[i] = strings.Repeat("x", 60<<10) // under the cap: read, once
	}
	b := memBucket(t, map[string]string{"m.parquet": string(parquetManifest(t, uris, labels, nil, nil, rows))})
	items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"})
	if err != nil || len(items) != rows || len(items[rows-1].Label) != 60<<10 {
		t.Fatalf("%d items, %v; want %d", len(items), err, rows)
	}
	// Not dictionary-encoded, such a column is refused from the file's
	// metadata, before a batch of it is read.
	big := labels[:16]
	for i := range big {
		big[i] = strings.Repeat("z", 70<<10)
	}
	b = memBucket(t, map[string]string{"m.parquet": string(parquetManifest(t, uris[:16], big, nil, nil, 16, parquet.WithDictionaryDefault(false)))})
	if _, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"}); err == nil || !strings.Contains(err.Error(), `column "label": row group 0 holds`) {
		t.Errorf("16 labels of 70 KiB, plain: %v, want the column refused", err)
	}
	// Values under the cap, but distinct, dictionary-encoded: the
	// dictionary alone is more than a walk may hold (16,000 of 60 KiB,
	// a 239 KB file compressed, were 983 MB).
	defer func(m int) { parquetMemory = m }(parquetMemory)
	parquetMemory = 16 << 20
	distinct := make([]string, 400)
	for i := range distinct {
		distinct[i] = fmt.Sprintf("%05d", i) + strings.Repeat("d", 60<<10)
	}
	b = memBucket(t, map[string]string{"m.parquet": string(parquetManifest(t, uris[:400], distinct, nil, nil, 400, parquet.WithDictionaryPageSizeLimit(64<<20)))})
	if _, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"}); err == nil || !strings.Contains(err.Error(), "more than 16 MiB of memory at once") {
		t.Errorf("400 distinct labels of 60 KiB under a 16 MiB budget: %v, want the walk refused", err)
	}
	parquetMemory = 256 << 20
	for i := range labels {
		labels[i] = "x"
	}
	labels[7] = strings.Repeat("y", 70<<10)
	b = memBucket(t, map[string]string{"m.parquet": string(parquetManifest(t, uris, labels, nil, nil, rows))})
	if _, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"}); err == nil || !strings.Contains(err.Error(), "row 8: its label is 71680 bytes") {
		t.Errorf("a label of 70 KiB: %v, want an error naming its row", err)
	}
}

// Unique uris, whose writer's dictionary fell back to plain pages, are
// read plain: Arrow's dictionary reader would keep every uri read in the
// row group, in every batch (61 MiB at 400k rows, 7 times as slow). The
// labels, dictionary pages throughout, are read as dictionaries.
func TestParquetDictionaryOnly(t *testing.T) {
	const rows = 100_000
	uris, labels := make([]string, rows), make([]string, rows)
	for i := range uris {
		uris[i] = fmt.Sprintf("s3://photos-bucket/collection/2026/11/29/camera-%04d/frame-%08d.jpg", i%7, i)
		labels[i] = fmt.Sprint(i % 10)
	}
	pf, err := file.NewParquetReader(bytes.NewReader(parquetManifest(t, uris, labels, nil, nil, rows)))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if dictionaryOnly(pf, 0, []int{0}) || !dictionaryOnly(pf, 1, []int{0}) {
		t.Errorf("dictionary pages throughout: uris %v, labels %v; want false, true", dictionaryOnly(pf, 0, []int{0}), dictionaryOnly(pf, 1, []int{0}))
	}
	b := memBucket(t, map[string]string{"m.parquet": string(parquetManifest(t, uris, labels, nil, nil, rows))})
	if items, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "m.parquet"}); err != nil || len(items) != rows || items[rows-1].Key != uris[rows-1] || items[rows-1].Label != "9" {
		t.Fatalf("%d items, %v", len(items), err)
	}
}

// A Hugging Face dataset's Parquet file (its images in a struct of bytes
// and path, its labels class indices) is said to be one: its columns
// named, not each leaf as "", and images held in the file not read.
func TestParquetImagesInFile(t *testing.T) {
	mem := memory.NewGoAllocator()
	image := arrow.StructOf(arrow.Field{Name: "bytes", Type: arrow.BinaryTypes.Binary, Nullable: true}, arrow.Field{Name: "path", Type: arrow.BinaryTypes.String, Nullable: true})
	sc := arrow.NewSchema([]arrow.Field{{Name: "image", Type: image}, {Name: "label", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rb := array.NewRecordBuilder(mem, sc)
	defer rb.Release()
	img := rb.Field(0).(*array.StructBuilder)
	img.Append(true)
	img.FieldBuilder(0).(*array.BinaryBuilder).Append([]byte("\x89PNG"))
	img.FieldBuilder(1).(*array.StringBuilder).Append("1.png")
	rb.Field(1).(*array.Int64Builder).Append(3)
	b := memBucket(t, map[string]string{"hf.parquet": string(recordParquet(t, mem, sc, rb, 10))})
	_, err := walkAll(t, Source{Bucket: b}, schemas.Dataset{Manifest: "hf.parquet"})
	if err == nil || !strings.Contains(err.Error(), `columns ["label"] must include uri and label; nested columns, which are none of a manifest's, are ["image"]: images held in the file`) {
		t.Errorf("a Hugging Face Parquet file: %v", err)
	}
}
