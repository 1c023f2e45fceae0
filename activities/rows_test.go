package activities

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/gcerrors"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/head"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
)

var rowsSpec = features.Spec{ModelDigest: "m", Input: "image", Outputs: []string{"f", "l"}, Columns: []string{"features", "logits"}}

// writeBlobs writes a dataset of shards×per rows of dim features, drawn
// around one centre per class, as shard manifests and feature files; its
// items' domain is domain.
func writeBlobs(t testing.TB, a *Activities, run, ds, domain string, shards, per, dim, classes int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 1))
	centres := make([][]float64, classes)
	crng := rand.New(rand.NewPCG(99, 99)) // the same classes in every dataset
	for c := range centres {
		centres[c] = make([]float64, dim)
		for j := range centres[c] {
			centres[c][j] = 3 * crng.NormFloat64()
		}
	}
	labels := make([]string, classes)
	for c := range labels {
		labels[c] = fmt.Sprint(c)
	}
	for s := range shards {
		var shard dataset.Shard
		images := make([]embed.Image, per)
		vec := make([]float32, per*dim)
		for i := range per {
			c := rng.IntN(classes)
			key := fmt.Sprintf("%s/%07d.png", ds, s*per+i)
			shard.Items = append(shard.Items, dataset.Item{ID: int64(s*per + i), Key: key, Label: labels[c], Domain: domain})
			images[i] = embed.Image{URI: key}
			for j := range dim {
				vec[i*dim+j] = float32(centres[c][j] + rng.NormFloat64())
			}
		}
		if err := store.WriteAll(ctx, a.Bucket, ShardKey(run, ds, s), shard.Marshal()); err != nil {
			t.Fatal(err)
		}
		rec := features.Record(a.Mem, rowsSpec.Columns, embed.Batch{Images: images, Vectors: [][]float32{vec, make([]float32, per*classes)}, Dims: []int{dim, classes}}, "")
		err := store.WriteArrow(ctx, a.Bucket, features.Key(rowsSpec, shard.Digest()), rec.Schema(), a.Mem, rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func fileActivities(t testing.TB) *Activities {
	t.Helper()
	b, err := store.Open(context.Background(), "file://"+t.TempDir()+"?create_dir=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &Activities{Bucket: b, Mem: memory.NewGoAllocator()}
}

func tenClasses() []string {
	var cs []string
	for c := range 10 {
		cs = append(cs, fmt.Sprint(c))
	}
	return cs
}

// A mini-batch epoch's rows are mixed across feature files: the debug set,
// one file, spreads over the epoch's batches instead of filling one or
// two of its own (which made the fit depend on which came last), every
// row once, in an order fixed by the seed.
func TestShuffledRowsMixFiles(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 20, 1000, 4, 10, 1)
	writeBlobs(t, a, "r", "extra", "", 1, 300, 4, 10, 2)
	sets := []rowSet{{ds: Train, shards: 20, weight: 1, strict: true}, {ds: "extra", shards: 1, weight: 5}}
	for _, budget := range []int64{1 << 30, 1000} { // in memory, streamed
		rows, _, err := a.newFeatureRows(context.Background(), "r", ModelRef{Spec: rowsSpec}, tenClasses(), sets, budget, "")
		if err != nil {
			t.Fatal(err)
		}
		order := func(seed uint64) (ws []float32) {
			if err := rows.EachShuffled(seed, func(x []float32, label int, w float32) error { ws = append(ws, w); return nil }); err != nil {
				t.Fatal(err)
			}
			return ws
		}
		ws := order(3)
		if len(ws) != 20300 {
			t.Fatalf("budget %d: %d rows, want 20,300", budget, len(ws))
		}
		const batch = 256
		most, batches := 0, 0
		for b := 0; b < len(ws); b += batch {
			n := 0
			for _, w := range ws[b:min(b+batch, len(ws))] {
				if w == 5 {
					n++
				}
			}
			most = max(most, n)
			if n > 0 {
				batches++
			}
		}
		if most > batch/4 || batches < 10 {
			t.Errorf("budget %d: the debug file's 300 rows came at most %d to a batch of %d, in %d batches; want them spread", budget, most, batch, batches)
		}
		if !slices.Equal(ws, order(3)) || slices.Equal(ws, order(4)) {
			t.Errorf("budget %d: the order is not fixed by the seed", budget)
		}
	}
}

// Streaming and in-memory rows give the same head bit for bit, and
// streaming holds at most two feature files at once.
func TestFeatureRowsStreamLikeMemory(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 7, 300, 12, 10, 1)
	ctx := context.Background()
	sets := []rowSet{{ds: Train, shards: 7, weight: 1, strict: true}}
	mem, st, err := a.newFeatureRows(ctx, "r", ModelRef{Spec: rowsSpec}, tenClasses(), sets, 1<<30, "")
	if err != nil {
		t.Fatal(err)
	}
	stream, _, err := a.newFeatureRows(ctx, "r", ModelRef{Spec: rowsSpec}, tenClasses(), sets, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	if mem.cached == nil || stream.cached != nil || st.rows[0] != 2100 {
		t.Fatalf("cached %v / %v, rows %d", mem.cached != nil, stream.cached != nil, st.rows[0])
	}
	for _, opt := range []head.Options{
		{Classes: 10, Iters: 30},
		{Classes: 10, MiniBatch: true, Epochs: 3, Seed: 7, ClassBalanced: true},
	} {
		hm, err := head.Train(mem, opt)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := head.Train(stream, opt)
		if err != nil {
			t.Fatal(err)
		}
		for i := range hm.W {
			if math.Float32bits(hm.W[i]) != math.Float32bits(hs.W[i]) {
				t.Fatalf("mini-batch %v: W[%d] %v in memory, %v streamed", opt.MiniBatch, i, hm.W[i], hs.W[i])
			}
		}
	}
	if m := stream.maxLive.Load(); m > 2 || stream.passes < 5 {
		t.Errorf("streaming held %d files at once over %d passes, want ≤ 2", m, stream.passes)
	}
}

// A debug set's precision counts its own rows only: train rows of the
// error domain, or with a domain when the pool has none, do not enter it.
func TestFeatureRowsPrecisionIsTheDebugSets(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "blur", 2, 50, 4, 10, 1)
	writeBlobs(t, a, "r", DebugTrain, "", 1, 20, 4, 10, 2)
	sets := []rowSet{{ds: Train, shards: 2, weight: 1, strict: true}, {ds: DebugTrain, shards: 1, weight: 1}}
	_, st, err := a.newFeatureRows(context.Background(), "r", ModelRef{Spec: rowsSpec}, tenClasses(), sets, 1<<30, "blur")
	if err != nil {
		t.Fatal(err)
	}
	if st.rows[1] != 20 || st.known[1] || st.domain[1] != 0 || !st.known[0] || st.domain[0] != 100 {
		t.Errorf("stats %+v: want the debug set's 20 rows without a domain, the train set's 100 all blur", st)
	}
}

// Retraining names the domains of the debug rows when none is the error
// domain asked for (a misspelt selection.error_domain shows as a
// precision of 0 in every row).
func TestRetrainNamesTheDomainsWhenNoneIsAskedFor(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 1, 50, 4, 10, 1)
	writeBlobs(t, a, "r", DebugTrain, "invert", 1, 20, 4, 10, 2)
	res, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 1,
		Debug: &DebugSet{Dataset: DebugTrain, Shards: 1}, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1}, Seed: 1, ErrorDomain: "inverted"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Precision == nil || *res.Precision != 0 || !slices.Equal(res.Domains, []string{"invert"}) {
		t.Errorf("precision %v, domains %q; want 0 and the rows' one domain", res.Precision, res.Domains)
	}
}

// heapPeak samples the heap in use until stop, which returns its peak
// above the heap in use when heapPeak was called: what the code measured
// added, not the test binary's own.
func heapPeak() (stop func() uint64) {
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); wg.Wait(); return peak.Load() - min(peak.Load(), base.HeapInuse) }
}

// Retrain fits a head on 1,000,000 rows (500 feature files) whose features
// (64 MB) never sit in memory together: the heap stays far below their
// size.
func TestRetrainStreamsAMillionRows(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1,000,000 rows")
	}
	a := fileActivities(t)
	const shards, per, dim = 500, 2000, 16
	writeBlobs(t, a, "big", Train, "", shards, per, dim, 10, 2)
	writeBlobs(t, a, "big", "extra", "", 1, 1000, dim, 10, 3)
	const dataBytes = shards * per * dim * 4
	// A low GC target makes the heap in use follow live memory rather
	// than garbage awaiting collection.
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	// Full batch streams the same way, one pass per objective evaluation
	// (TestFeatureRowsStreamLikeMemory); one mini-batch epoch keeps this
	// test short.
	for _, recipe := range []schemas.Retrain{
		{Lambda: 0.01, Mode: schemas.MiniBatch, Epochs: 1, BatchSize: 512, LearningRate: 0.05},
	} {
		recipe.DebugWeight, recipe.MemoryMB = 1, 8
		runtime.GC()
		stop := heapPeak()
		start := time.Now()
		res, err := a.Retrain(context.Background(), RetrainInput{
			Run: "big", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: shards,
			Debug: &DebugSet{Dataset: "extra", Shards: 1}, Recipe: recipe, Seed: 1,
		})
		peak := stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d+%d rows in %s, heap peak %.1f MB (features %.0f MB)", recipe.Mode, res.TrainRows, res.DebugRows,
			time.Since(start).Round(time.Millisecond), float64(peak)/(1<<20), float64(dataBytes)/(1<<20))
		if res.TrainRows != shards*per || res.DebugRows != 1000 || !res.Streamed {
			t.Errorf("rows %d+%d streamed %v", res.TrainRows, res.DebugRows, res.Streamed)
		}
		if peak > dataBytes/3 {
			t.Errorf("heap peaked at %.1f MB, want well below the %.0f MB of features", float64(peak)/(1<<20), float64(dataBytes)/(1<<20))
		}
		data, err := a.Bucket.ReadAll(context.Background(), res.HeadKey)
		if err != nil || len(data) == 0 {
			t.Fatalf("head: %v", err)
		}
	}
}

// A feature file that cannot be read again while training streams it (a
// store's hiccup on one of the fit's many passes) fails the activity for
// a retry, not as bad input, which would end the pass.
func TestRetrainReadFailureIsRetried(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 4, 50, 8, 10, 1)
	var reads atomic.Int32
	a.Bucket = storetest.Hooked(a.Bucket, &storetest.Hooks{BeforeRead: func(_ context.Context, key string) error {
		if strings.HasPrefix(key, "features/") && reads.Add(1) == 6 { // in the fit, after the rows were counted
			return errors.New("connection reset by peer")
		}
		return nil
	}})
	_, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(),
		TrainShards: 4, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1, MemoryMB: 0}, Seed: 1})
	var app *temporal.ApplicationError
	if err == nil || !strings.Contains(err.Error(), "connection reset") || (errors.As(err, &app) && app.NonRetryable()) {
		t.Fatalf("a read failing during the fit: %v; want it, retryable", err)
	}
}

// A damaged feature file met by a step that does not embed (Retrain
// here) drops its cache entry and fails the pass at once, saying to run
// it again (which embeds the shard), not after ten retries of the same.
func TestRetrainOnADamagedEntry(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 2, 50, 8, 10, 1)
	ctx := context.Background()
	data, _ := store.ReadAll(ctx, a.Bucket, ShardKey("r", Train, 1))
	shard, err := dataset.ParseShard("shard", data)
	if err != nil {
		t.Fatal(err)
	}
	key := features.Key(rowsSpec, shard.Digest())
	store.WriteAll(ctx, a.Bucket, key, []byte("ARROW1 cut short"))
	store.WriteAll(ctx, a.Bucket, rejectsKey(key), []byte("[]"))
	_, err = a.Retrain(ctx, RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(),
		TrainShards: 2, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1, MemoryMB: 64}, Seed: 1})
	var app *temporal.ApplicationError
	if !errors.As(err, &app) || !app.NonRetryable() || !strings.Contains(err.Error(), "run the pass again") {
		t.Fatalf("retrain over a damaged feature file: %v; want a final error saying to run the pass again", err)
	}
	if ok, _ := a.Bucket.Exists(ctx, rejectsKey(key)); ok {
		t.Error("the damaged entry is still complete: the next pass would fail on it too")
	}
}

// A fit on rows held in memory goes through them a feature file at a time,
// as a streamed one does: it heartbeats between files (a fit of many
// classes and features outlasts the heartbeat timeout), and a cancelled
// pass stops it there.
func TestFeatureRowsInMemoryStopWhenCancelled(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 4, 50, 8, 10, 1)
	ctx, cancel := context.WithCancel(context.Background())
	rows, _, err := a.newFeatureRows(ctx, "r", ModelRef{Spec: rowsSpec}, tenClasses(), []rowSet{{ds: Train, shards: 4, weight: 1, strict: true}}, 64<<20, "")
	if err != nil {
		t.Fatal(err)
	}
	if rows.cached == nil {
		t.Fatal("4×50 rows were streamed, want them in memory")
	}
	n := 0
	err = rows.each(nil, func([]float32, int, float32) error {
		if n++; n == 60 { // in the second file
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n != 100 {
		t.Errorf("cancelled in the second file: %d rows, %v; want 100 rows and the cancellation", n, err)
	}
}

// A head is not exported onto a target model replaced since the pass
// began: it was fitted on the old model's features. The pass keeps its
// results and says why there is no model, and an earlier pass's model
// under its ID is not left to pass for one.
func TestExportRefusesAChangedModel(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 1, 50, 8, 10, 1)
	if err := store.WriteAll(context.Background(), a.Bucket, "models/t.onnx", []byte("a model uploaded since")); err != nil {
		t.Fatal(err)
	}
	ref := ModelRef{Path: "models/t.onnx", Spec: rowsSpec} // the digest the pass began with: "m"
	// An earlier pass under this ID exported a model of its own head.
	if err := store.WriteAll(context.Background(), a.Bucket, MethodKey("r", "m", "model.onnx"), []byte("an earlier head's model")); err != nil {
		t.Fatal(err)
	}
	res, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ref, Classes: tenClasses(),
		TrainShards: 1, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5}, Seed: 1, Export: true})
	if err != nil || res.HeadKey == "" {
		t.Fatalf("%+v, %v", res, err)
	}
	if res.ModelKey != "" || !strings.Contains(res.ModelError, "changed during the pass") {
		t.Errorf("model %q, error %q: want none, and why", res.ModelKey, res.ModelError)
	}
	if there, err := a.Bucket.Exists(context.Background(), MethodKey("r", "m", "model.onnx")); err != nil || there {
		t.Errorf("an earlier pass's model at the method's model.onnx: there %v (%v), want it gone", there, err)
	}
	// Gone since: the results stand too, without a model.
	a.Bucket.Delete(context.Background(), "models/t.onnx")
	res, err = a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ref, Classes: tenClasses(),
		TrainShards: 1, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5}, Seed: 1, Export: true})
	if err != nil || res.HeadKey == "" || res.ModelKey != "" || !strings.Contains(res.ModelError, "cannot read it") {
		t.Errorf("a target gone since the pass began: %+v, %v; want the head, no model, and why", res, err)
	}
}

// The debug set is planned from the selection, before the guards; Keep,
// their output, counts each image it keeps: a pool image listed twice
// whose copy the guards dropped is trained on once, with the label kept.
func TestRetrainKeepsDuplicatesOnce(t *testing.T) {
	ctx := context.Background()
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 1, 50, 4, 10, 1)
	// The selection: a.png twice (labels 3 and 5), b.png, c.png twice
	// with one label.
	writeSelection(t, a, []string{"pool/a.png", "pool/b.png", "pool/a.png", "pool/c.png", "pool/c.png"}, []string{"3", "1", "5", "2", "2"})
	// What the guards kept: a.png with its second label, c.png once.
	kept := "uri,label\n/pool/a.png,5\n/pool/b.png,1\n/pool/c.png,2\n"
	if err := store.WriteAll(ctx, a.Bucket, "r/kept.csv", []byte(kept)); err != nil {
		t.Fatal(err)
	}
	res, err := a.Retrain(ctx, RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 1,
		Debug: &DebugSet{Dataset: "sel", Shards: 1, Keep: "r/kept.csv"}, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.DebugRows != 3 {
		t.Errorf("%d debug rows, want the 3 the guards kept", res.DebugRows)
	}
}

// writeSelection writes a selection "sel" of run "r": one shard of the
// keys with their labels, and its features (zeros).
func writeSelection(t *testing.T, a *Activities, keys, labels []string) {
	t.Helper()
	ctx := context.Background()
	var shard dataset.Shard
	var images []embed.Image
	for i, k := range keys {
		shard.Items = append(shard.Items, dataset.Item{ID: int64(i), Key: k, Label: labels[i]})
		images = append(images, embed.Image{URI: k})
	}
	if err := store.WriteAll(ctx, a.Bucket, ShardKey("r", "sel", 0), shard.Marshal()); err != nil {
		t.Fatal(err)
	}
	n := len(keys)
	rec := features.Record(a.Mem, rowsSpec.Columns, embed.Batch{Images: images, Vectors: [][]float32{make([]float32, n*4), make([]float32, n*10)}, Dims: []int{4, 10}}, "")
	defer rec.Release()
	if err := store.WriteArrow(ctx, a.Bucket, features.Key(rowsSpec, shard.Digest()), rec.Schema(), a.Mem, rec); err != nil {
		t.Fatal(err)
	}
}

// Debug images whose weak label is no class are left out of retraining,
// counted, and a few of their labels named for the method's note (a pool
// labelled in another vocabulary than the target's shows no other sign).
func TestRetrainCountsLabelsThatAreNoClass(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 1, 50, 4, 10, 1)
	writeSelection(t, a, []string{"pool/a.png", "pool/b.png", "pool/c.png", "pool/d.png", "pool/e.png"}, []string{"digit_1", "3", "digit_1", "cat", "dog"})
	res, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 1,
		Debug: &DebugSet{Dataset: "sel", Shards: 1}, Recipe: schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.DebugRows != 1 || res.SkippedLabels != 4 || !slices.Equal(res.SkippedExamples, []string{"digit_1", "cat", "dog"}) {
		t.Errorf("%d debug rows, %d skipped %q; want 1, 4 and the three labels once each", res.DebugRows, res.SkippedLabels, res.SkippedExamples)
	}
}

// A class that no image retrained on has (train lacks it, and the method's
// own images do not bring it) is counted and named: the head never
// predicts it, and its accuracy of 0 is the only other sign.
func TestRetrainNamesClassesItHasNoImageOf(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 1, 200, 4, 8, 1) // classes 0–7 only
	recipe := schemas.Retrain{Lambda: 0.01, Iters: 5, DebugWeight: 1}
	res, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "train_only", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 1, Recipe: recipe, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Unlearned != 2 || !slices.Equal(res.UnlearnedExamples, []string{"8", "9"}) {
		t.Errorf("train without classes 8 and 9: %d unlearned %q, want 2, both named", res.Unlearned, res.UnlearnedExamples)
	}
	writeSelection(t, a, []string{"pool/a.png"}, []string{"9"})
	res, err = a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "dcd", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 1,
		Debug: &DebugSet{Dataset: "sel", Shards: 1}, Recipe: recipe, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Unlearned != 1 || !slices.Equal(res.UnlearnedExamples, []string{"8"}) {
		t.Errorf("with a debug image of class 9: %d unlearned %q, want 8 alone", res.Unlearned, res.UnlearnedExamples)
	}
}

// The target's own logits score the "none" row only when they are one a
// class: with another count, logit c would stand for a class that is not
// the model's, and the accuracy would be wrong without a word.
func TestEvaluateNeedsALogitPerClass(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Test, "", 1, 20, 4, 12, 1) // 12 logits an image
	writeBlobs(t, a, "r", ErrorHeldout, "", 1, 20, 4, 12, 2)
	in := EvaluateInput{Run: "r", Method: "none", Model: ModelRef{Path: "models/clf.onnx", Spec: rowsSpec}, Classes: tenClasses(), TestShards: 1, HeldoutShards: 1}
	_, err := a.Evaluate(context.Background(), in)
	if err == nil || !strings.Contains(err.Error(), "there are 10") || !strings.Contains(err.Error(), "12 logits") {
		t.Errorf("10 classes, 12 logits: %v, want an error saying both", err)
	}
	in.Classes = append(tenClasses(), "10", "11")
	if res, err := a.Evaluate(context.Background(), in); err != nil || res.TestImages != 20 {
		t.Errorf("12 classes, 12 logits: %+v, %v", res, err)
	}
}

// A fit that diverges (a learning rate far too high) fails naming it,
// rather than writing an empty head.json that Evaluate stumbles on.
func TestRetrainDivergedSaysSo(t *testing.T) {
	a := fileActivities(t)
	writeBlobs(t, a, "r", Train, "", 2, 50, 8, 10, 1)
	_, err := a.Retrain(context.Background(), RetrainInput{Run: "r", Method: "m", Model: ModelRef{Spec: rowsSpec}, Classes: tenClasses(), TrainShards: 2,
		Recipe: schemas.Retrain{Lambda: 0.01, Mode: schemas.MiniBatch, Epochs: 2, BatchSize: 16, LearningRate: 1e300, DebugWeight: 1}, Seed: 1})
	if err == nil || !strings.Contains(err.Error(), "diverged") {
		t.Fatalf("a fit at learning rate 1e300: %v, want it failed as diverged", err)
	}
	if _, err := a.Bucket.ReadAll(context.Background(), MethodKey("r", "m", "head.json")); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("head.json of a diverged fit: %v, want none written", err)
	}
}
