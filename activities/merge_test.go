package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v15/arrow/array"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/schemas"
)

// MergeTopK holds the best neighbours, not the partials they came from: a
// pool's best come from thousands of partials, and a neighbour whose
// strings were views of its partial's buffers kept each whole partial in
// memory. Here every one of 256 partials gives the best some neighbour.
func TestMergeTopKHoldsNoPartial(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 50 MB of partials")
	}
	a := fileActivities(t)
	ctx := context.Background()
	const run, partials, rows, k = "hold", 256, 200, 300
	label := strings.Repeat("x", 1000) // 200 KB of strings a partial
	for p := range partials {
		rb := array.NewRecordBuilder(a.Mem, schemas.Neighbors)
		for j := range rows {
			rb.Field(0).(*array.Int32Builder).Append(0)
			rb.Field(1).(*array.Int32Builder).Append(int32(j))
			// The best 300: row 0 of every partial, and row 1 of 44.
			rb.Field(2).(*array.Float32Builder).Append(float32(j*1000 + p))
			rb.Field(3).(*array.Int64Builder).Append(int64(p*rows + j))
			rb.Field(4).(*array.StringBuilder).Append(fmt.Sprintf("pool/%d-%d.png", p, j))
			rb.Field(5).(*array.StringBuilder).Append(label)
			rb.Field(6).(*array.StringBuilder).Append("")
			rb.Field(7).(*array.StringBuilder).Append("")
		}
		rec := rb.NewRecord()
		err := store.WriteArrow(ctx, a.Bucket, TopKKey(run, "", p), schemas.Neighbors, a.Mem, rec)
		rec.Release()
		rb.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	runtime.GC()
	stop := heapPeak()
	res, err := a.MergeTopK(ctx, MergeTopKInput{Run: run, Shards: partials, Queries: 1, K: k})
	peak := stop()
	if err != nil || res.Rows != k {
		t.Fatalf("%+v, %v", res, err)
	}
	// The partials read ahead (mergeAhead of them) and the best's own
	// strings; all 256 partials' strings are 51 MB.
	const partialsBytes = partials * rows * 1000
	t.Logf("heap peak %.1f MB merging %d partials of %.1f MB of strings", float64(peak)/(1<<20), partials, float64(partialsBytes)/partials/(1<<20))
	if peak > partialsBytes/2 {
		t.Errorf("heap peaked at %.1f MB: the best hold their partials' %.0f MB of strings", float64(peak)/(1<<20), float64(partialsBytes)/(1<<20))
	}
}

// A pass reset in Temporal replays its scan's name but may cut its
// batches elsewhere: the merge tiles the shards with the ranges of both
// executions and the shards' own partials that exist, never stepping to a
// shard that has neither.
func TestPartialKeysAfterAReset(t *testing.T) {
	a := memActivities(t)
	ctx := context.Background()
	const run, scan = "r", "s"
	put := func(key string) {
		if err := a.Bucket.WriteAll(ctx, key, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	// One execution: ranges [0,4) and [6,10), shards 4 and 5 alone.
	put(TopKRangeKey(run, scan, 0, 4))
	put(TopKRangeKey(run, scan, 6, 10))
	keys, err := a.partialKeys(ctx, run, scan, scan, 10)
	want := []string{TopKRangeKey(run, scan, 0, 4), TopKKey(run, scan, 4), TopKKey(run, scan, 5), TopKRangeKey(run, scan, 6, 10)}
	if err != nil || !slices.Equal(keys, want) {
		t.Fatalf("one execution's: %q, %v; want %q", keys, err, want)
	}
	// The reset's replay cut [2,8) and searched shards 0, 1, 8, 9 alone:
	// [0,4) then 4 alone would miss shard 4's partial (never written).
	put(TopKRangeKey(run, scan, 2, 8))
	for _, i := range []int{0, 1, 8, 9} {
		put(TopKKey(run, scan, i))
	}
	keys, err = a.partialKeys(ctx, run, scan, scan, 10)
	want = []string{TopKKey(run, scan, 0), TopKKey(run, scan, 1), TopKRangeKey(run, scan, 2, 8), TopKKey(run, scan, 8), TopKKey(run, scan, 9)}
	if err != nil || !slices.Equal(keys, want) {
		t.Fatalf("after a reset: %q, %v; want %q", keys, err, want)
	}
	// Both executions' ranges from shard 0: the one leading on.
	put(TopKRangeKey(run, scan, 0, 2))
	keys, err = a.partialKeys(ctx, run, scan, scan, 10)
	want = []string{TopKRangeKey(run, scan, 0, 2), TopKRangeKey(run, scan, 2, 8), TopKKey(run, scan, 8), TopKKey(run, scan, 9)}
	if err != nil || !slices.Equal(keys, want) {
		t.Fatalf("two ranges from shard 0: %q, %v; want %q", keys, err, want)
	}
}

// A pool none of whose images was embedded (each shard's partial empty)
// fails the merge as bad data, naming the first shard's first reject,
// rather than have every method add nothing and the pass report train
// alone as a comparison.
func TestMergeTopKEmptyPool(t *testing.T) {
	a := fileActivities(t)
	ctx := context.Background()
	const run = "empty"
	spec := features.Spec{ModelDigest: "m", Columns: []string{"features"}}
	shard := dataset.Shard{Items: []dataset.Item{{Key: "pool/a.png?sig=SECRET", Label: "1"}}}
	rejects, _ := json.Marshal([]embed.Reject{{URI: "pool/a.png?sig=SECRET", Reason: "decode: image: unknown format"}})
	for key, data := range map[string][]byte{ShardKey(run, Pool, 0): shard.Marshal(), rejectsKey(features.Key(spec, shard.Digest())): rejects} {
		if err := store.WriteAll(ctx, a.Bucket, key, data); err != nil {
			t.Fatal(err)
		}
	}
	rb := array.NewRecordBuilder(a.Mem, schemas.Neighbors)
	rec := rb.NewRecord()
	err := store.WriteArrow(ctx, a.Bucket, TopKKey(run, "", 0), schemas.Neighbors, a.Mem, rec)
	rec.Release()
	rb.Release()
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.MergeTopK(ctx, MergeTopKInput{Run: run, Shards: 1, Queries: 3, K: 5, Similarity: ModelRef{Path: "m.onnx", Spec: spec}})
	if err == nil || !strings.Contains(err.Error(), "data.pool: not one of its images") || !strings.Contains(err.Error(), "unknown format") || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("merging a pool of no embedded image: %v, want data.pool's error naming the first reject, redacted", err)
	}
}
