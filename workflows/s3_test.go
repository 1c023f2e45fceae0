package workflows_test

// Users' own data: a pass over ImageFolder datasets of mixed image formats
// and sizes, with one corrupt file, stored on a real S3 server (versitygw)
// and in a local folder named by file:// URLs.

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"github.com/apache/arrow/go/v15/parquet"
	"github.com/apache/arrow/go/v15/parquet/pqarrow"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"golang.org/x/image/bmp"
	"golang.org/x/image/draw"

	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
	"dcd/workflows"
)

// s3Server starts a real S3 server (storetest.S3Server), creates a bucket
// and returns its gocloud URL.
func s3Server(t *testing.T, bucket string) string {
	t.Helper()
	srv := storetest.S3Server(t)
	url, err := srv.Bucket(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// mixedFormats re-encodes an 8-bit gray digit the way user datasets come:
// as PNG (gray, 16-bit gray, RGBA), JPEG (RGB), GIF (paletted) and BMP
// (RGB), at sizes other than the model's 28×28. It returns the bytes and a
// file extension.
func mixedFormats(t *testing.T, i int, src []byte) ([]byte, string) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	resize := func(dst draw.Image) draw.Image {
		draw.BiLinear.Scale(dst, dst.Bounds(), img, img.Bounds(), draw.Src, nil)
		return dst
	}
	var buf bytes.Buffer
	ext := ""
	switch i % 6 {
	case 0: // the original: 8-bit gray PNG, 28×28
		return src, ".png"
	case 1:
		err, ext = jpeg.Encode(&buf, resize(image.NewRGBA(image.Rect(0, 0, 36, 36))), &jpeg.Options{Quality: 95}), ".jpg"
	case 2:
		pal := make(color.Palette, 256)
		for v := range pal {
			pal[v] = color.Gray{Y: uint8(v)}
		}
		err, ext = gif.Encode(&buf, resize(image.NewPaletted(image.Rect(0, 0, 28, 28), pal)), nil), ".gif"
	case 3:
		err, ext = bmp.Encode(&buf, resize(image.NewRGBA(image.Rect(0, 0, 44, 44)))), ".bmp"
	case 4:
		err, ext = png.Encode(&buf, resize(image.NewGray16(image.Rect(0, 0, 32, 32)))), ".png"
	case 5:
		err, ext = png.Encode(&buf, resize(image.NewNRGBA(image.Rect(0, 0, 56, 56)))), ".png"
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), ext
}

// corruptImage starts like a JPEG and then is not one.
var corruptImage = []byte("\xff\xd8\xff\xe0 this file was cut off in transfer")

// mixedItem is one image of the mixed world, as written.
type mixedItem struct {
	key, label, domain string
}

// mixedWorld copies a subset of the small demo world into dst under prefix,
// every dataset as an ImageFolder (<set>/<label>/<file>) of mixed formats
// and sizes, and adds one corrupt image to the pool. It returns the pool's
// images (for a manifest) and the demo config, whose model it copies too.
func mixedWorld(t *testing.T, dst *blob.Bucket, prefix string) (pool []mixedItem, cfg schemas.Config) {
	t.Helper()
	ctx := context.Background()
	src, cfg := demoWorld(t)
	copySet := func(name string, ds schemas.Dataset, keep func(it dataset.Item) bool) []mixedItem {
		var out []mixedItem
		n := 0
		err := dataset.Walk(ctx, src, ds, func(it dataset.Item) error {
			if !keep(it) {
				return nil
			}
			data, err := src.ReadAll(ctx, it.Key)
			if err != nil {
				return err
			}
			data, ext := mixedFormats(t, n, data)
			base := strings.TrimSuffix(path.Base(it.Key), path.Ext(it.Key))
			key := fmt.Sprintf("%s%s/%s/%s%s", prefix, name, it.Label, base, ext)
			n++
			out = append(out, mixedItem{key: key, label: it.Label, domain: it.Domain})
			return dst.WriteAll(ctx, key, data, nil)
		})
		if err != nil {
			t.Fatalf("copy %s: %v", name, err)
		}
		return out
	}
	perClass := func(limit int) func(dataset.Item) bool {
		seen := map[string]int{}
		return func(it dataset.Item) bool {
			seen[it.Label]++
			return seen[it.Label] <= limit
		}
	}
	copySet("train", cfg.Data.Train, perClass(200))
	copySet("test", cfg.Data.Test, perClass(50))
	copySet("error_sample", cfg.Data.ErrorSample, perClass(1000))
	copySet("error_heldout", cfg.Data.ErrorHeldout, perClass(30))
	others := 0
	pool = copySet("pool", cfg.Data.Pool, func(it dataset.Item) bool {
		if it.Domain == cfg.Selection.ErrorDomain {
			return true
		}
		others++
		return others <= 1400
	})
	broken := mixedItem{key: prefix + "pool/3/broken.jpg", label: "3", domain: "clean"}
	if err := dst.WriteAll(ctx, broken.key, corruptImage, nil); err != nil {
		t.Fatal(err)
	}
	pool = append(pool, broken)
	model, err := src.ReadAll(ctx, cfg.Target.Path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Target.Path = prefix + "models/target.onnx"
	if err := dst.WriteAll(ctx, cfg.Target.Path, model, nil); err != nil {
		t.Fatal(err)
	}
	return pool, cfg
}

// poolParquet writes the pool as a Parquet manifest (uri,label,domain) at
// key, uris relative to the manifest's folder.
func poolParquet(t *testing.T, b *blob.Bucket, key string, pool []mixedItem) {
	t.Helper()
	mem := memory.NewGoAllocator()
	sc := arrow.NewSchema([]arrow.Field{
		{Name: "uri", Type: arrow.BinaryTypes.String},
		{Name: "label", Type: arrow.BinaryTypes.String},
		{Name: "domain", Type: arrow.BinaryTypes.String},
	}, nil)
	rb := array.NewRecordBuilder(mem, sc)
	defer rb.Release()
	dir := path.Dir(key) + "/"
	for _, it := range pool {
		rb.Field(0).(*array.StringBuilder).Append(strings.TrimPrefix(it.key, dir))
		rb.Field(1).(*array.StringBuilder).Append(it.label)
		rb.Field(2).(*array.StringBuilder).Append(it.domain)
	}
	rec := rb.NewRecord()
	defer rec.Release()
	tbl := array.NewTableFromRecords(sc, []arrow.Record{rec})
	defer tbl.Release()
	var buf bytes.Buffer
	if err := pqarrow.WriteTable(tbl, &buf, 1000, parquet.NewWriterProperties(), pqarrow.DefaultWriterProps()); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(context.Background(), key, buf.Bytes(), nil); err != nil {
		t.Fatal(err)
	}
}

// checkMixedPass checks a finished pass over a mixed world: the corrupt
// pool image is the one reject, listed with its reason, and the selection
// lifts E_heldout accuracy without costing clean test accuracy.
func checkMixedPass(t *testing.T, b *blob.Bucket, res workflows.PassResult, corruptKey string) {
	t.Helper()
	none, dcd := method(t, res.Eval, "none"), method(t, res.Eval, "dcd")
	t.Logf("test accuracy %.3f → %.3f, E_heldout accuracy %.3f → %.3f, debug-train %d images",
		none.TestAccuracy, dcd.TestAccuracy, none.HeldoutAccuracy, dcd.HeldoutAccuracy, dcd.DebugTrainSize)
	if res.Rejects != 1 {
		t.Errorf("rejects %d, want 1 (the corrupt image): every other format must decode", res.Rejects)
	}
	rejects, err := b.ReadAll(context.Background(), res.RejectsKey)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rejects), corruptKey) || !strings.Contains(string(rejects), "decode") {
		t.Errorf("rejects.csv does not list %s with its reason:\n%s", corruptKey, rejects)
	}
	if gain := dcd.HeldoutAccuracy - none.HeldoutAccuracy; gain < 0.15 {
		t.Errorf("E_heldout accuracy %.3f → %.3f: gain %.3f, want ≥ 0.15", none.HeldoutAccuracy, dcd.HeldoutAccuracy, gain)
	}
	if drop := none.TestAccuracy - dcd.TestAccuracy; drop > 0.03 {
		t.Errorf("test accuracy %.3f → %.3f: drop %.3f, want ≤ 0.03", none.TestAccuracy, dcd.TestAccuracy, drop)
	}
	if dcd.DebugTrainSize == 0 {
		t.Error("empty debug-train set")
	}
	if _, err := b.ReadAll(context.Background(), res.EvalKey); err != nil {
		t.Errorf("eval.json: %v", err)
	}
}

// A pass whose worker bucket is on a real S3 server: ImageFolder datasets
// of mixed formats (one of them named by its s3:// URL), a Parquet pool
// manifest with one corrupt image, and the class list in a classes file.
func TestS3MixedFormatsPass(t *testing.T) {
	url := s3Server(t, "dcd-users")
	ctx := context.Background()
	b, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, _ := devServer(t)
	pool, cfg := mixedWorld(t, b, "users/")
	poolParquet(t, b, "users/pool/manifest.parquet", pool)
	if err := b.WriteAll(ctx, "users/classes.txt", []byte(strings.Join(cfg.Classes, "\n")+"\n"), nil); err != nil {
		t.Fatal(err)
	}
	startWorker(t, c, b)

	cfg.Name = "s3-mixed"
	cfg.Classes = nil
	cfg.ClassesFile = "users/classes.txt"
	cfg.Data = schemas.Data{
		Train: schemas.Dataset{Prefix: "users/train/"},
		// The same bucket, named by URL: the worker opens it beside its own.
		Test:         schemas.Dataset{Prefix: strings.Replace(url, "dcd-users?", "dcd-users/users/test/?", 1)},
		ErrorSample:  schemas.Dataset{Prefix: "users/error_sample/"},
		ErrorHeldout: schemas.Dataset{Prefix: "users/error_heldout/"},
		Pool:         schemas.Dataset{Manifest: "users/pool/manifest.parquet"},
	}
	res, err := runPass(t, c, "s3-mixed-"+time.Now().UTC().Format("150405.000"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkMixedPass(t, b, res, "users/pool/3/broken.jpg")
	if p := method(t, res.Eval, "dcd").SelectionPrecision; p == nil || *p < 0.8 {
		t.Errorf("selection precision %v, want ≥ 0.8 (the Parquet manifest carries the domain)", p)
	}
	if res.Eval.TestImages != 500 {
		t.Errorf("test images %d, want 500 (listed through the s3:// URL prefix)", res.Eval.TestImages)
	}

	// The same pool packed into archives on S3 (`starter pack`) lists the
	// same labels in the same order, read back by range reads.
	walk := func(ds schemas.Dataset) (items []dataset.Item) {
		t.Helper()
		if err := dataset.Walk(ctx, b, ds, func(it dataset.Item) error {
			items = append(items, it)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return items
	}
	packed, err := runPack(t, c, "pack-s3-"+time.Now().UTC().Format("150405.000"), workflows.PackInput{
		Dataset: cfg.Data.Pool, Out: "users/pool-wds/", PerArchive: 100, Readers: 16, Window: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("packed the pool into %d archives on S3: %d images, %d skipped (first %+v)", packed.Archives, packed.Packed, packed.Skipped, packed.FirstSkip)
	skipped := map[string]bool{}
	if packed.Skipped > 0 {
		data, err := b.ReadAll(ctx, "users/pool-wds/skipped.csv")
		if err != nil {
			t.Fatal(err)
		}
		rows, _ := csv.NewReader(bytes.NewReader(data)).ReadAll()
		for _, r := range rows[1:] {
			skipped[r[1]] = true
		}
	}
	var want, got []string
	for _, it := range walk(cfg.Data.Pool) {
		if !skipped[it.Key] {
			want = append(want, it.Label+"/"+it.Domain)
		}
	}
	for _, it := range walk(schemas.Dataset{WebDataset: "users/pool-wds/"}) {
		got = append(got, it.Label+"/"+it.Domain)
	}
	if len(want) < 100 || !slices.Equal(got, want) || packed.Packed != len(want) || len(skipped) != packed.Skipped {
		t.Errorf("packed %d images (%d skipped: %v); the archives list %d labels, the manifest %d: equal %v",
			packed.Packed, packed.Skipped, skipped, len(got), len(want), slices.Equal(got, want))
	}
}

// A pass whose datasets live outside the worker's bucket, in a local folder
// named by file:// URLs; an unreadable E_sample image fails the pass naming
// the file.
func TestFileURLMixedFormatsPass(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data, err := store.Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	pool, cfg := mixedWorld(t, data, "")
	base := "file://" + dir + "/"

	// The worker's own bucket holds only the model.
	c, _ := devServer(t)
	b, _ := fileBucket(t)
	model, err := data.ReadAll(ctx, cfg.Target.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(ctx, "models/target.onnx", model, nil); err != nil {
		t.Fatal(err)
	}
	startWorker(t, c, b)

	cfg.Name = "file-mixed"
	cfg.Target.Path = "models/target.onnx"
	cfg.Selection.ErrorDomain = ""
	cfg.Data = schemas.Data{
		Train:        schemas.Dataset{Prefix: base + "train/"},
		Test:         schemas.Dataset{Prefix: base + "test/"},
		ErrorSample:  schemas.Dataset{Prefix: base + "error_sample/"},
		ErrorHeldout: schemas.Dataset{Prefix: base + "error_heldout"},
		Pool:         schemas.Dataset{Prefix: base + "pool/"},
	}
	stamp := time.Now().UTC().Format("150405.000")
	res, err := runPass(t, c, "file-mixed-"+stamp, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkMixedPass(t, b, res, base+"pool/3/broken.jpg")
	if n := len(pool); res.Eval.HeldoutImages != 300 || n < 1000 {
		t.Errorf("heldout images %d (want 300), pool %d", res.Eval.HeldoutImages, n)
	}

	// The same E_sample plus one file that is not an image: the pass fails,
	// naming the file and why, before the pool is scanned.
	bad := cfg
	var n int
	err = dataset.Walk(ctx, data, schemas.Dataset{Prefix: "error_sample/"}, func(it dataset.Item) error {
		n++
		img, err := data.ReadAll(ctx, it.Key)
		if err != nil {
			return err
		}
		return data.WriteAll(ctx, "bad_sample/"+strings.TrimPrefix(it.Key, "error_sample/"), img, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := data.WriteAll(ctx, "bad_sample/7/unreadable.png", []byte("\x89PNG\r\n\x1a\nnot really"), nil); err != nil {
		t.Fatal(err)
	}
	bad.Data.ErrorSample = schemas.Dataset{Prefix: base + "bad_sample/"}
	_, err = runPass(t, c, "file-bad-sample-"+stamp, bad)
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() {
		t.Fatalf("a pass with an unreadable E_sample image: %v, want a non-retryable failure", err)
	}
	for _, want := range []string{"data.error_sample", base + "bad_sample/7/unreadable.png", "png"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if n != 100 {
		t.Errorf("E_sample has %d images, want 100", n)
	}
}
