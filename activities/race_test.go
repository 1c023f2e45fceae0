package activities_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
)

// A cached-only search reads a shard's features beside its rejects. When
// another worker completes the entry between the two (features, then
// rejects), the features read missed and the rejects say cached: the
// search must read the features again, not find a shard of no rows.
func TestCachedSearchWhileEntryIsWritten(t *testing.T) {
	const run, k = "race", 3
	w, ref := cachedPoolShard(t, run)
	ctx := context.Background()
	key := cacheEntry(t, w)
	rejectsKey := key + ".rejects.json"
	entry, err := w.b.ReadAll(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	rejects, err := w.b.ReadAll(ctx, rejectsKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.b.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := w.b.Delete(ctx, rejectsKey); err != nil {
		t.Fatal(err)
	}

	// The features' first read misses, and completes the entry as it
	// does; the rejects' read waits for that.
	written := make(chan struct{})
	hooked := storetest.Hooked(w.b, &storetest.Hooks{BeforeRead: func(_ context.Context, k string) error {
		switch k {
		case key:
			select {
			case <-written:
				return nil
			default:
			}
			if err := w.b.WriteAll(ctx, key, entry, nil); err != nil {
				t.Error(err)
			}
			if err := w.b.WriteAll(ctx, rejectsKey, rejects, nil); err != nil {
				t.Error(err)
			}
			close(written)
			return storetest.ErrMissing
		case rejectsKey:
			<-written
		}
		return nil
	}})
	acts := withBucket(w.acts, hooked)
	hw := &searchWorld{&world{t: t, b: acts.Bucket, mem: w.mem, run: w.run, acts: acts}}
	var emb activities.EmbedShardResult
	hw.must(hw.acts.EmbedShard, activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0,
		Model: ref, K: k, CachedOnly: true}, &emb)
	if !emb.Cached || emb.TopK == nil || emb.TopK.Rows != 6*k {
		t.Fatalf("search of a cached shard of %d images: %+v (TopK %+v), want %d rows", emb.Images, emb, emb.TopK, 6*k)
	}
}

// A cache entry whose rejects remain but whose feature file is gone is not
// a shard of no rows: its search fails, and drops the entry, so that the
// retry finds the shard uncached (and embeds it) rather than fail so again.
func TestCachedSearchWithoutFeatureFile(t *testing.T) {
	const run, k = "gone", 3
	w, ref := cachedPoolShard(t, run)
	ctx := context.Background()
	if err := w.b.Delete(ctx, cacheEntry(t, w)); err != nil {
		t.Fatal(err)
	}
	in := activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, K: k, CachedOnly: true}
	_, err := w.acts.EmbedShard(ctx, in)
	if err == nil || !strings.Contains(err.Error(), "embed the shard") {
		t.Fatalf("search of a shard whose feature file is gone: %v", err)
	}
	if res, err := w.acts.EmbedShard(ctx, in); err != nil || res.Cached {
		t.Errorf("the retry: %+v, %v; want the shard uncached", res, err)
	}
}

// A damaged feature file (a truncated copy) fails every read of it the
// same way: its entry is dropped, and the retry embeds the shard again.
func TestCachedSearchWithDamagedFeatureFile(t *testing.T) {
	const run, k = "damaged", 3
	w, ref := cachedPoolShard(t, run)
	ctx := context.Background()
	key := cacheEntry(t, w)
	data, err := w.b.ReadAll(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.b.WriteAll(ctx, key, data[:len(data)/2], nil); err != nil {
		t.Fatal(err)
	}
	in := activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, K: k, CachedOnly: true}
	_, err = w.acts.EmbedShard(ctx, in)
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("search of a shard whose feature file is cut in half: %v", err)
	}
	if res, err := w.acts.EmbedShard(ctx, in); err != nil || res.Cached {
		t.Errorf("the retry: %+v, %v; want the shard uncached", res, err)
	}
}

// Two workers that embed a shard at once each write the feature file, then
// the rejects: one's rejects can end beside the other's features, which
// hold other images. A search that finds the two disagree (after reading
// again) drops the entry, and the retry embeds the shard, rather than
// count images as embedded that no row holds.
func TestCachedSearchWithCrossedEntry(t *testing.T) {
	const run, k = "crossed", 3
	w, ref := cachedPoolShard(t, run)
	ctx := context.Background()
	key := cacheEntry(t, w)
	for _, cachedOnly := range []bool{true, false} {
		crossed, _ := json.Marshal([]embed.Reject{{URI: "pool/a.png", Reason: "gone"}, {URI: "pool/b.png", Reason: "gone"}})
		if err := w.b.WriteAll(ctx, key+".rejects.json", crossed, nil); err != nil {
			t.Fatal(err)
		}
		in := activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, K: k, CachedOnly: cachedOnly}
		_, err := w.acts.EmbedShard(ctx, in)
		if err == nil || !strings.Contains(err.Error(), "50 rows, its rejects 2 of its 50 images") {
			t.Fatalf("cached only %v: search of an entry whose rejects are another write's: %v", cachedOnly, err)
		}
		in.CachedOnly = true
		if res, err := w.acts.EmbedShard(ctx, in); err != nil || res.Cached {
			t.Errorf("cached only %v: the retry: %+v, %v; want the shard uncached", cachedOnly, res, err)
		}
	}

	// As many rows and rejects as the shard has images, but not split
	// between them: image 0 in neither, image 5 in both.
	var images []embed.Image
	for i := 1; i < 50; i++ {
		images = append(images, embed.Image{ID: int64(1000 + i), URI: fmt.Sprintf("pool/%03d.png", i)})
	}
	rec := features.Record(w.mem, []string{"features"}, embed.Batch{Images: images, Vectors: [][]float32{make([]float32, 49*8)}, Dims: []int{8}}, "")
	defer rec.Release()
	if err := store.WriteArrow(ctx, w.b, key, rec.Schema(), w.mem, rec); err != nil {
		t.Fatal(err)
	}
	crossed, _ := json.Marshal([]embed.Reject{{URI: "pool/005.png", Reason: "gone"}})
	if err := w.b.WriteAll(ctx, key+".rejects.json", crossed, nil); err != nil {
		t.Fatal(err)
	}
	in := activities.EmbedShardInput{Run: run, Dataset: activities.Pool, Shard: 0, Model: ref, K: k, CachedOnly: true}
	if _, err := w.acts.EmbedShard(ctx, in); err == nil || !strings.Contains(err.Error(), "two workers wrote the entry at once") {
		t.Fatalf("search of an entry whose rows and rejects name other images, as many: %v", err)
	}
	if res, err := w.acts.EmbedShard(ctx, in); err != nil || res.Cached {
		t.Errorf("the retry: %+v, %v; want the shard uncached", res, err)
	}
}

// The searches a run starts together read its queries once; one cancelled
// while they are read does not fail the others.
func TestQueriesReadOnceForSearchesAtOnce(t *testing.T) {
	const run, k = "together", 3
	w, ref := cachedPoolShard(t, run)
	gate := make(chan struct{})
	var reads atomic.Int32
	acts := withBucket(w.acts, storetest.Hooked(w.b, &storetest.Hooks{BeforeRead: func(ctx context.Context, key string) error {
		if key == activities.RunKey(run, "queries.arrow") {
			reads.Add(1)
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}))
	in := activities.TopKShardInput{Run: run, Shard: 0, Model: ref, K: k}
	search := func(ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := acts.TopKShard(ctx, in)
			done <- err
		}()
		return done
	}
	var waiting atomic.Int32
	*activities.SharedWait = func() { waiting.Add(1) }
	defer func() { *activities.SharedWait = func() {} }()
	ctx, cancel := context.WithCancel(context.Background())
	first := search(ctx)
	for reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := search(context.Background())
	// The second waits on the first's read (a sleep would let a loaded
	// machine's second come after it, and test nothing).
	for deadline := time.Now().Add(10 * time.Second); waiting.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d searches wait on the queries' read, want 2", waiting.Load())
		}
	}
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled search: %v, want cancelled", err)
	}
	close(gate)
	if err := <-second; err != nil {
		t.Fatalf("a search beside a cancelled one: %v", err)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("two searches read the queries %d times, want once", n)
	}
}

// cachedPoolShard is a world whose run has one pool shard of 50 images,
// cached, and 6 queries, and the model that cached it.
func cachedPoolShard(t *testing.T, run string) (*searchWorld, activities.ModelRef) {
	w := newSearchWorld(t)
	spec := features.Spec{ModelDigest: "m", Input: "image", Outputs: []string{"features"}, Columns: []string{"features"},
		Preprocess: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}
	w.cachedShard(run, spec, 50, 6, 8, 1)
	return w, activities.ModelRef{Path: "m.onnx", Spec: spec}
}

// cacheEntry is the key of the one feature file in w's bucket.
func cacheEntry(t *testing.T, w *searchWorld) string {
	t.Helper()
	iter := w.b.List(&blob.ListOptions{Prefix: "features/"})
	for {
		obj, err := iter.Next(context.Background())
		if err != nil {
			t.Fatalf("no feature file: %v", err)
		}
		if strings.HasSuffix(obj.Key, ".arrow") {
			return obj.Key
		}
	}
}

// withBucket is a's activities over bucket b.
func withBucket(a *activities.Activities, b *blob.Bucket) *activities.Activities {
	return &activities.Activities{Bucket: b, Mem: a.Mem, Sessions: a.Sessions, Decoders: a.Decoders,
		Readers: a.Readers, Buckets: a.Buckets, StorageURL: a.StorageURL}
}
