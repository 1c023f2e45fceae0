package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/selection"
	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
)

// writeGatherPool writes a pool of 3 shards × 10 images cached with spec,
// each image's features and logits its pool id and its id's negative (so a
// row's origin shows), shard 1 rejecting pool id 13, and the pool's index.
func writeGatherPool(t *testing.T, a *Activities, run string, spec features.Spec) {
	t.Helper()
	ctx := context.Background()
	var index ShardIndex
	for s := range 3 {
		var shard dataset.Shard
		var b embed.Batch
		b.Vectors, b.Dims = make([][]float32, 2), []int{3, 2}
		var rejects []embed.Reject
		for i := range 10 {
			id := int64(10*s + i)
			it := dataset.Item{ID: id, Key: fmt.Sprintf("pool/%03d.png", id), Label: "a", Domain: "d"}
			shard.Items = append(shard.Items, it)
			if id == 13 {
				rejects = append(rejects, embed.Reject{URI: it.Key, Reason: "cannot decode"})
				continue
			}
			b.Images = append(b.Images, embed.Image{ID: id, URI: it.Key})
			v := float32(id)
			b.Vectors[0] = append(b.Vectors[0], v, v+0.25, v+0.5)
			b.Vectors[1] = append(b.Vectors[1], -v, -v-0.5)
		}
		index.FirstIDs = append(index.FirstIDs, shard.Items[0].ID)
		put(t, a, ShardKey(run, Pool, s), shard.Marshal())
		key := features.Key(spec, shard.Digest())
		rec := features.Record(a.Mem, spec.Columns, b, spec.StoredAs)
		err := store.WriteArrow(ctx, a.Bucket, key, rec.Schema(), a.Mem, rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
		rj, _ := json.Marshal(append([]embed.Reject{}, rejects...))
		put(t, a, rejectsKey(key), rj)
	}
	data, _ := json.Marshal(index)
	put(t, a, ShardIndexKey(run, Pool), data)
}

func put(t *testing.T, a *Activities, key string, data []byte) {
	t.Helper()
	if err := store.WriteAll(context.Background(), a.Bucket, key, data); err != nil {
		t.Fatal(err)
	}
}

// planSelection writes a selection of these pool ids as the manifest
// writeSelection writes, and its debug-train shards as Plan would cut it
// (here: two shards).
func planSelection(t *testing.T, a *Activities, run string, ids []int64) (string, int) {
	t.Helper()
	var chosen []selection.Chosen
	var items []dataset.Item
	for i, id := range ids {
		it := dataset.Item{ID: id, Key: fmt.Sprintf("pool/%03d.png", id), Label: "a", Domain: "d"}
		chosen = append(chosen, selection.Chosen{Item: it, Score: float64(i)})
		it.ID = int64(i) // a planned selection's ids are its own positions
		items = append(items, it)
	}
	manifest := MethodKey(run, "dcd", "selected.csv")
	if err := a.writeSelection(context.Background(), manifest, chosen); err != nil {
		t.Fatal(err)
	}
	half := len(items) / 2
	for s, part := range [][]dataset.Item{items[:half], items[half:]} {
		put(t, a, ShardKey(run, DebugTrain, s), (&dataset.Shard{Items: part}).Marshal())
	}
	return manifest, 2
}

// A selection's features are gathered from the pool's cache row for row,
// across pool shards, in the debug-train shards' order, with the pool's
// rejects for the images the pool rejected; the entries read back as any
// cached shard's.
func TestGatherSelection(t *testing.T) {
	for _, c := range []struct {
		storedAs, bucket string // rows read by preads, or by requests
	}{{"", "mem"}, {schemas.Float16, "mem"}, {"", "file"}, {schemas.Float16, "file"}} {
		storedAs := c.storedAs
		t.Run(c.bucket+" stored as "+storedAs, func(t *testing.T) {
			a := memActivities(t)
			if c.bucket == "file" {
				a = fileActivities(t)
			}
			ctx := context.Background()
			spec := rowsSpec
			spec.StoredAs = storedAs
			m := ModelRef{Path: "target.onnx", Spec: spec}
			writeGatherPool(t, a, "r", spec)
			ids := []int64{2, 9, 13, 14, 20, 28}
			manifest, shards := planSelection(t, a, "r", ids)

			res, err := a.GatherSelection(ctx, GatherInput{Run: "r", Dataset: DebugTrain, Shards: shards, Manifest: manifest, Model: m})
			if err != nil {
				t.Fatal(err)
			}
			if res != (GatherResult{Shards: 2, Images: 5, Rejects: 1}) {
				t.Fatalf("gathered %+v, want both shards, 5 images and pool id 13's reject", res)
			}
			var got []int64
			for s := range shards {
				l, err := a.loadShard(ctx, "r", DebugTrain, s, m, "features")
				if err != nil {
					t.Fatal(err)
				}
				for i, it := range l.items {
					row := l.mat.Data[i*3 : i*3+3]
					var id int64
					fmt.Sscanf(it.Key, "pool/%d.png", &id)
					if want := []float32{float32(id), float32(id) + 0.25, float32(id) + 0.5}; !slices.Equal(row, want) {
						t.Errorf("%s: features %v, want %v", it.Key, row, want)
					}
					got = append(got, id)
				}
				logits, err := features.Load(ctx, a.Bucket, l.key, "logits", a.Mem)
				if err != nil || logits.Dim != 2 {
					t.Fatalf("logits of shard %d: %v (%+v)", s, err, logits)
				}
			}
			if want := []int64{2, 9, 14, 20, 28}; !slices.Equal(got, want) {
				t.Errorf("rows %v, want %v", got, want)
			}
			rejects, ok, err := a.cachedRejects(ctx, features.Key(spec, mustShard(t, a, ShardKey("r", DebugTrain, 0)).Digest()))
			if err != nil || !ok || len(rejects) != 1 || rejects[0].URI != "pool/013.png" || rejects[0].Reason != "cannot decode" {
				t.Errorf("shard 0's rejects %+v (complete %v, %v), want pool/013.png's", rejects, ok, err)
			}

			// Gathered again: both found cached, nothing to do.
			if again, err := a.GatherSelection(ctx, GatherInput{Run: "r", Dataset: DebugTrain, Shards: shards, Manifest: manifest, Model: m}); err != nil || again != res {
				t.Errorf("second gather %+v, %v; want %+v", again, err, res)
			}
		})
	}
}

// Nothing is gathered, and nothing written, when the pool is cached with
// another model or the selection does not give pool ids; a debug-train
// shard that draws on a pool shard missing from the cache, or damaged there,
// is left, the others gathered.
func TestGatherSelectionLeavesWhatItCannot(t *testing.T) {
	ctx := context.Background()
	m := ModelRef{Path: "target.onnx", Spec: rowsSpec}
	count := func(a *Activities, manifest string, model ModelRef) GatherResult {
		t.Helper()
		res, err := a.GatherSelection(ctx, GatherInput{Run: "r", Dataset: DebugTrain, Shards: 2, Manifest: manifest, Model: model})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	a := memActivities(t)
	writeGatherPool(t, a, "r", rowsSpec)
	manifest, _ := planSelection(t, a, "r", []int64{2, 9, 14, 20, 28})
	other := m
	other.Spec.ModelDigest = "another model"
	if res := count(a, manifest, other); res.Shards != 0 {
		t.Errorf("pool cached with another model: gathered %+v", res)
	}

	// Pool shard 2 not in the cache: the shard drawing on it is left.
	sh := mustShard(t, a, ShardKey("r", Pool, 2))
	if err := a.Bucket.Delete(ctx, rejectsKey(features.Key(rowsSpec, sh.Digest()))); err != nil {
		t.Fatal(err)
	}
	if res := count(a, manifest, m); res.Shards != 1 || res.Images != 2 {
		t.Errorf("pool shard 2 missing: gathered %+v, want shard 0 alone (2 images)", res)
	}

	// A selection whose pool ids name other images (a stale index, a
	// wrong manifest) copies nobody's row in their place.
	d := memActivities(t)
	writeGatherPool(t, d, "r", rowsSpec)
	planSelection(t, d, "r", []int64{2, 9, 14, 20})
	put(t, d, "wrong.csv", []byte("uri,label,domain,score,pool_id\npool/002.png,a,d,0,3\npool/009.png,a,d,1,9\npool/014.png,a,d,2,14\npool/020.png,a,d,3,20\n"))
	if res := count(d, "wrong.csv", m); res.Shards != 1 || res.Images != 2 {
		t.Errorf("pool/002.png given pool id 3: gathered %+v, want only the shard without it", res)
	}

	// The first pool shard needed gone from the cache (not the pool's
	// model): the shards not drawing on it are still gathered.
	f := memActivities(t)
	writeGatherPool(t, f, "r", rowsSpec)
	firstGone, _ := planSelection(t, f, "r", []int64{2, 9, 14, 20})
	if err := f.Bucket.Delete(ctx, rejectsKey(features.Key(rowsSpec, mustShard(t, f, ShardKey("r", Pool, 0)).Digest()))); err != nil {
		t.Fatal(err)
	}
	if res := count(f, firstGone, m); res.Shards != 1 || res.Images != 2 {
		t.Errorf("pool shard 0 not cached: gathered %+v, want the shard not drawing on it (2 images)", res)
	}

	// A damaged pool cache entry is not gathered from, and fails nothing;
	// though it is the first, the shards that do not draw on it are.
	e := memActivities(t)
	writeGatherPool(t, e, "r", rowsSpec)
	damaged, _ := planSelection(t, e, "r", []int64{2, 9, 14, 20})
	put(t, e, features.Key(rowsSpec, mustShard(t, e, ShardKey("r", Pool, 0)).Digest()), []byte("not arrow"))
	if res := count(e, damaged, m); res.Shards != 1 || res.Images != 2 {
		t.Errorf("pool shard 0 damaged: gathered %+v, want the shard not drawing on it (2 images)", res)
	}

	// A selection written before pool ids were: nothing to go by.
	b := memActivities(t)
	writeGatherPool(t, b, "r", rowsSpec)
	planSelection(t, b, "r", []int64{2, 9, 14, 20})
	put(t, b, "old.csv", []byte("uri,label,domain,score\npool/002.png,a,d,0\npool/009.png,a,d,1\npool/014.png,a,d,2\npool/020.png,a,d,3\n"))
	if res := count(b, "old.csv", m); res.Shards != 0 {
		t.Errorf("no pool ids: gathered %+v", res)
	}
}

func mustShard(t *testing.T, a *Activities, key string) *dataset.Shard {
	t.Helper()
	sh, err := a.readShard(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// A shard manifest missing where its plan wrote it says the worker is likely
// on another bucket than the one that planned.
func TestMissingShardSaysWhy(t *testing.T) {
	a := memActivities(t)
	_, err := a.readShard(context.Background(), ShardKey("r", Test, 15))
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), ShardKey("r", Test, 15)) || !strings.Contains(err.Error(), "give every worker the same -storage") {
		t.Errorf("a shard manifest not found: %v", err)
	}
}

// A pool's shard index, or a cache entry's rejects, that the worker may not
// read fails the step at once, naming the object: not retried as a
// store's hiccup, nor (the rejects) read as an entry not yet written.
func TestForbiddenIndexAndRejectsFailAtOnce(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	a.Bucket = storetest.Hooked(a.Bucket, &storetest.Hooks{BeforeRead: func(context.Context, string) error { return fs.ErrPermission }})
	_, _, err := a.readShardIndex(ctx, "r")
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), ShardIndexKey("r", Pool)) {
		t.Errorf("a shard index the worker may not read: %v, want a non-retryable error naming it", err)
	}
	_, _, err = a.cachedRejects(ctx, "features/x.arrow")
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || !strings.Contains(err.Error(), rejectsKey("features/x.arrow")) {
		t.Errorf("rejects the worker may not read: %v, want a non-retryable error naming them", err)
	}
}
