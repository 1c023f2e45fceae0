package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"image"
	"image/png"
	"io"
	"math"
	"path"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"dcd/internal/mnist"
	"dcd/internal/ortrun"
)

var full = flag.Bool("demo.full", false, "also build the full-size default world and log its numbers")

// small is the world the tests build: big enough for the model to pass its
// accuracy check, small enough for a 2-core machine.
var small = Options{Train: 3000, Pool: 4000, Test: 1500, Heldout: 400}

func initORT(t *testing.T) {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatal(err)
	}
}

func newBucket(t *testing.T) *blob.Bucket {
	t.Helper()
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{CreateDir: true, Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestBuild(t *testing.T) {
	initORT(t)
	ctx := context.Background()
	o := small.WithDefaults()
	b := newBucket(t)
	start := time.Now()
	cfg, err := Build(ctx, b, mnist.DefaultDir(), small, ortrun.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first build: %v", time.Since(start))
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "demo-blur" || cfg.Selection.ErrorDomain != "blur" || cfg.Data.Pool.Manifest != o.Prefix+keyManifest {
		t.Errorf("config: name %q, error domain %q, pool %q", cfg.Name, cfg.Selection.ErrorDomain, cfg.Data.Pool.Manifest)
	}

	t.Run("files", func(t *testing.T) {
		for dir, want := range map[string]int{"train/": 3000, "test/": 1500, "error_sample/": 100, "error_heldout/": 400, "pool/images/": 4000} {
			if got := len(listKeys(t, b, o.Prefix+dir)); got != want {
				t.Errorf("%s holds %d files, want %d", dir, got, want)
			}
		}
		perClass := map[string]int{}
		for _, k := range listKeys(t, b, o.Prefix+"error_sample/") {
			perClass[strings.Split(strings.TrimPrefix(k, o.Prefix), "/")[1]]++
		}
		for c := range classes {
			if n := perClass[strconv.Itoa(c)]; n != 10 {
				t.Errorf("error_sample/%d holds %d files, want 10", c, n)
			}
		}
	})

	t.Run("pool", func(t *testing.T) {
		manifest := readCSV(t, b, o.Prefix+keyManifest)
		truth := readCSV(t, b, o.Prefix+keyTruth)
		if len(manifest) != o.Pool || len(truth) != o.Pool {
			t.Fatalf("manifest has %d rows, truth %d, want %d", len(manifest), len(truth), o.Pool)
		}
		domains := map[string]int{}
		noisy := 0
		for i, row := range manifest {
			if row[0] != truth[i][0] || row[2] != truth[i][2] {
				t.Fatalf("row %d: manifest %q, truth %q", i, row, truth[i])
			}
			if row[1] != truth[i][1] {
				noisy++
			}
			domains[row[2]]++
		}
		if share := float64(noisy) / float64(o.Pool); math.Abs(share-o.LabelNoise) > 0.03 {
			t.Errorf("noisy label share %.3f, want %.2f±0.03", share, o.LabelNoise)
		}
		want := map[string]int{"blur": 200, "noise": 200, "invert": 200, "contrast": 200, "clean": 3200}
		if !reflect.DeepEqual(domains, want) {
			t.Errorf("domains %v, want %v", domains, want)
		}
		if ok, err := b.Exists(ctx, o.Prefix+"pool/"+manifest[0][0]); !ok || err != nil {
			t.Errorf("manifest uri %q has no object beside the manifest", manifest[0][0])
		}
		// Each image's version is its pixels' digest: a world rebuilt
		// under the same keys is not taken for the one cached.
		versions := map[string]bool{}
		for _, row := range manifest[:20] {
			data, err := b.ReadAll(ctx, o.Prefix+"pool/"+row[0])
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(bytes.NewReader(data))
			gray, ok := img.(*image.Gray)
			if err != nil || !ok {
				t.Fatalf("%s: %T, %v", row[0], img, err)
			}
			sum := sha256.Sum256(gray.Pix)
			if len(row) < 4 || row[3] != hex.EncodeToString(sum[:8]) {
				t.Fatalf("%s: manifest row %q, want its pixels' digest %x as its version", row[0], row, sum[:8])
			}
			versions[row[3]] = true
		}
		if len(versions) < 15 {
			t.Errorf("20 pool images have %d versions", len(versions))
		}
	})

	t.Run("accuracy", func(t *testing.T) {
		model, err := b.ReadAll(ctx, o.Prefix+keyModel)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := ortrun.NewSession("target", model, []string{"image"}, []string{"features", "logits"}, ortrun.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		cleanAcc := folderAccuracy(t, b, sess, o.Prefix+"test/")
		errorAcc := folderAccuracy(t, b, sess, o.Prefix+"error_heldout/")
		t.Logf("clean test %.4f, blur heldout %.4f", cleanAcc, errorAcc)
		if cleanAcc < 0.9 {
			t.Errorf("clean test accuracy %.4f, want ≥ 0.9", cleanAcc)
		}
		if errorAcc >= 0.5 {
			t.Errorf("blur heldout accuracy %.4f, want < 0.5", errorAcc)
		}
		w := readWorld(t, b, o.Prefix)
		if math.Abs(w.CleanTestAccuracy-cleanAcc) > 0.002 || math.Abs(w.ErrorHeldoutAccuracy-errorAcc) > 0.002 {
			t.Errorf("world.json says %.4f/%.4f, the PNGs give %.4f/%.4f", w.CleanTestAccuracy, w.ErrorHeldoutAccuracy, cleanAcc, errorAcc)
		}
	})

	t.Run("deterministic", func(t *testing.T) {
		b2 := newBucket(t)
		cfg2, err := Build(ctx, b2, mnist.DefaultDir(), small, ortrun.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cfg, cfg2) {
			t.Errorf("configs differ:\n%+v\n%+v", cfg, cfg2)
		}
		for _, key := range []string{keyModel, keyManifest, keyTruth, keyWorld, "error_heldout/" + firstName(t, b, o.Prefix+"error_heldout/")} {
			if !bytes.Equal(readAll(t, b, o.Prefix+key), readAll(t, b2, o.Prefix+key)) {
				t.Errorf("%s differs between two builds", key)
			}
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		before, err := b.Attributes(ctx, o.Prefix+keyModel)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		cfg2, err := Build(ctx, b, mnist.DefaultDir(), small, ortrun.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 10*time.Second { // (a loaded machine's stall; the ModTime below is the proof)
			t.Errorf("second build took %v; it should only read world.json", d)
		}
		if !reflect.DeepEqual(cfg, cfg2) {
			t.Errorf("configs differ:\n%+v\n%+v", cfg, cfg2)
		}
		after, err := b.Attributes(ctx, o.Prefix+keyModel)
		if err != nil {
			t.Fatal(err)
		}
		if !after.ModTime.Equal(before.ModTime) {
			t.Errorf("target.onnx was rewritten")
		}
	})

	t.Run("built by older code", func(t *testing.T) {
		w := readWorld(t, b, o.Prefix)
		w.Version = worldVersion - 1
		data, _ := json.Marshal(w)
		if err := b.WriteAll(ctx, o.Prefix+keyWorld, data, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := Build(ctx, b, mnist.DefaultDir(), small, ortrun.Options{}); err != nil {
			t.Fatal(err)
		}
		if got := readWorld(t, b, o.Prefix).Version; got != worldVersion {
			t.Errorf("a world of version %d was reused, want it built again as %d", worldVersion-1, worldVersion)
		}
	})
}

// TestRebuildSweeps builds a world at a prefix that holds a different one:
// no image of the old world may stay listed, and nothing outside the layout
// may go.
func TestRebuildSweeps(t *testing.T) {
	initORT(t)
	ctx := context.Background()
	b := newBucket(t)
	o := Options{Train: 2000, Pool: 500, Test: 500, Heldout: 100, Prefix: "mine"}
	stale := "mine/train/3/99999.png"
	if err := b.WriteAll(ctx, stale, []byte("old"), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(ctx, "mine/world.json", []byte(`{"options":{"seed":7}}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAll(ctx, "mine/notes.txt", []byte("keep"), nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := Build(ctx, b, mnist.DefaultDir(), o, ortrun.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Data.Train.Prefix != "mine/train/" {
		t.Errorf("train prefix %q, want mine/train/", cfg.Data.Train.Prefix)
	}
	if exists(t, b, stale) {
		t.Errorf("stale image %s kept", stale)
	}
	if !exists(t, b, "mine/notes.txt") {
		t.Errorf("mine/notes.txt, outside the layout, was deleted")
	}
	if got := readWorld(t, b, "mine/").Options.Seed; got != 1 {
		t.Errorf("world.json records seed %d, want 1", got)
	}
}

func TestWithDefaults(t *testing.T) {
	o := Options{Corruption: "noise", Seed: 3}.WithDefaults()
	if !reflect.DeepEqual(o.Others, []string{"invert", "contrast", "fog"}) {
		t.Errorf("others %q, want invert, contrast, fog", o.Others)
	}
	if !strings.HasPrefix(o.Prefix, "demo/noise-s3-") || !strings.HasSuffix(o.Prefix, "/") {
		t.Errorf("prefix %q, want demo/noise-s3-<hash>/", o.Prefix)
	}
	p := Options{Corruption: "noise", Seed: 3, Pool: 100}.WithDefaults().Prefix
	if p == o.Prefix {
		t.Errorf("worlds with different pools share the prefix %q", p)
	}
	if o2 := o.WithDefaults(); !reflect.DeepEqual(o, o2) {
		t.Errorf("WithDefaults is not idempotent: %+v then %+v", o, o2)
	}
}

func TestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Corruption: "snow"}, `demo: corruption "snow" is not one of`},
		{Options{Others: []string{"blur"}}, `demo: others[0] "blur" repeats a corruption`},
		{Options{Train: 50000, Pool: 20000}, "demo: train 50000 + pool 20000 exceeds MNIST's 60000 train images"},
		{Options{OtherShare: 0.4}, "demo: error_share 0.05 + 3 others × other_share 0.4 exceed the whole pool"},
		{Options{LabelNoise: 1.5}, "must be in [0, 1]"},
	} {
		_, err := Build(context.Background(), nil, "", tc.o, ortrun.Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.o, err, tc.want)
		}
	}
}

// TestFullSize builds the default world of DESIGN.md §6 when -demo.full is
// given, and logs its accuracies and wall time.
func TestFullSize(t *testing.T) {
	if !*full {
		t.Skip("needs -demo.full")
	}
	initORT(t)
	b := newBucket(t)
	start := time.Now()
	cfg, err := Build(context.Background(), b, mnist.DefaultDir(), Options{}, ortrun.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := readWorld(t, b, Options{}.WithDefaults().Prefix)
	t.Logf("full build %v: %s, clean test %.4f, %s heldout %.4f, counts %v",
		time.Since(start), cfg.Name, w.CleanTestAccuracy, w.Options.Corruption, w.ErrorHeldoutAccuracy, w.Counts)
}

func listKeys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return keys
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, obj.Key)
	}
}

func exists(t *testing.T, b *blob.Bucket, key string) bool {
	t.Helper()
	ok, err := b.Exists(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func firstName(t *testing.T, b *blob.Bucket, prefix string) string {
	t.Helper()
	return strings.TrimPrefix(listKeys(t, b, prefix)[0], prefix)
}

func readAll(t *testing.T, b *blob.Bucket, key string) []byte {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// readCSV returns the rows after the header.
func readCSV(t *testing.T, b *blob.Bucket, key string) [][]string {
	t.Helper()
	rows, err := csv.NewReader(bytes.NewReader(readAll(t, b, key))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows[1:]
}

func readWorld(t *testing.T, b *blob.Bucket, prefix string) World {
	t.Helper()
	var w World
	if err := json.Unmarshal(readAll(t, b, prefix+keyWorld), &w); err != nil {
		t.Fatal(err)
	}
	return w
}

// folderAccuracy classifies every PNG of an ImageFolder split as a user's
// pass would see it: decoded from storage, scaled to [0,1].
func folderAccuracy(t *testing.T, b *blob.Bucket, sess *ortrun.Session, prefix string) float64 {
	t.Helper()
	keys := listKeys(t, b, prefix)
	x := make([]float32, 0, len(keys)*side*side)
	for _, k := range keys {
		img, err := png.Decode(bytes.NewReader(readAll(t, b, k)))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		g, ok := img.(*image.Gray)
		if !ok || g.Bounds().Dx() != side || g.Bounds().Dy() != side {
			t.Fatalf("%s: %T %v, want 8-bit gray %dx%d", k, img, img.Bounds(), side, side)
		}
		for _, v := range g.Pix {
			x = append(x, float32(v)/255)
		}
	}
	out, err := sess.Run(ortrun.Tensor{Shape: []int64{int64(len(keys)), 1, side, side}, Floats: x})
	if err != nil {
		t.Fatal(err)
	}
	if got := out[0].Shape; !reflect.DeepEqual(got, []int64{int64(len(keys)), featureDim}) {
		t.Errorf("features shape %v, want [%d %d]", got, len(keys), featureDim)
	}
	logits := out[1].Floats
	correct := 0
	for i, k := range keys {
		label, err := strconv.Atoi(path.Base(path.Dir(k)))
		if err != nil {
			t.Fatalf("%s: label folder: %v", k, err)
		}
		row := logits[i*classes : (i+1)*classes]
		best := 0
		for c, v := range row {
			if v > row[best] {
				best = c
			}
		}
		if best == label {
			correct++
		}
	}
	return float64(correct) / float64(len(keys))
}
