package dataset

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"dcd/schemas"
)

// BenchmarkCut cuts a Parquet manifest of 2^20 images into shards of
// about 2,000: written nowhere (the walk and the shards' encoding, the CPU
// of planning on a worker), and to a store that answers each write after
// 50 ms, CutWrites at once.
func BenchmarkCut(b *testing.B) {
	const n = 1 << 20
	uris, labels := make([]string, n), make([]string, n)
	for i := range n {
		uris[i], labels[i] = fmt.Sprintf("/pool/%03d/%09d.jpg", i%100, i), fmt.Sprint(i%100)
	}
	bk := memBucket(b, map[string]string{"m.parquet": string(parquetManifest(b, uris, labels, nil, nil, n))})
	src := Source{Bucket: bk}
	for _, latency := range []time.Duration{0, 50 * time.Millisecond} {
		b.Run(fmt.Sprintf("write=%s", latency), func(b *testing.B) {
			for b.Loop() {
				_, images, err := src.Cut(context.Background(), schemas.Dataset{Manifest: "m.parquet"}, func(it Item, n int) bool { return EndsShard(it.Key, n, 2000) },
					func(context.Context, int, []byte) error { time.Sleep(latency); return nil }, nil)
				if err != nil || images != n {
					b.Fatal(images, err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "images/s")
		})
	}
}

// Cut writes each shard once, numbered in the dataset's order, holding
// the items the walk gave in that order; a failed write ends it with that
// write's error.
func TestCut(t *testing.T) {
	files := map[string]string{}
	for i := range 5000 {
		files[fmt.Sprintf("pool/%d/%05d.png", i%3, i)] = "x"
	}
	src := Source{Bucket: memBucket(t, files)}
	var want []Item
	if err := src.Walk(context.Background(), schemas.Dataset{Prefix: "pool/"}, func(it Item) error {
		want = append(want, it)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	end := func(it Item, n int) bool { return EndsShard(it.Key, n, 50) }
	var mu sync.Mutex
	written := map[int]*Shard{}
	progressed := 0
	shards, images, err := src.Cut(context.Background(), schemas.Dataset{Prefix: "pool/"}, end, func(_ context.Context, i int, manifest []byte) error {
		sh, err := ParseShard(fmt.Sprint(i), manifest)
		mu.Lock()
		defer mu.Unlock()
		if written[i] != nil {
			t.Errorf("shard %d written twice", i)
		}
		written[i] = sh
		return err
	}, func(s, _ int) { progressed = s })
	if err != nil || images != len(want) || shards != len(written) || progressed != shards || shards < 50 {
		t.Fatalf("cut %d shards (%d written, progress %d), %d images, %v; want %d images in about 100 shards", shards, len(written), progressed, images, err, len(want))
	}
	var got []Item
	for i := range shards {
		sh := written[i]
		for j, it := range sh.Items {
			if end(it, j+1) != (j == len(sh.Items)-1) && i < shards-1 {
				t.Fatalf("shard %d ends at item %d of %d", i, j, len(sh.Items))
			}
		}
		got = append(got, sh.Items...)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the shards hold %d items, not the walk's %d in order", len(got), len(want))
	}

	full := errors.New("store full")
	_, _, err = src.Cut(context.Background(), schemas.Dataset{Prefix: "pool/"}, end, func(_ context.Context, i int, _ []byte) error {
		if i == 7 {
			return full
		}
		return nil
	}, nil)
	if err != full {
		t.Errorf("a failed write: %v, want its error", err)
	}
}

// Cut's writes hold at most cutItems images between them: a pack's
// shards of many images each are written fewer at once.
func TestCutHoldsBoundedItems(t *testing.T) {
	const per = 150_000
	n := 4 * per
	var csv strings.Builder
	csv.WriteString("uri,label\n")
	for i := range n {
		fmt.Fprintf(&csv, "%d.png,c\n", i)
	}
	src := Source{Bucket: memBucket(t, map[string]string{"m.csv": csv.String()})}
	var now, most atomic.Int32
	shards, _, err := src.Cut(context.Background(), schemas.Dataset{Manifest: "m.csv"}, func(_ Item, n int) bool { return n == per },
		func(context.Context, int, []byte) error {
			m := now.Add(1)
			defer now.Add(-1)
			for x := most.Load(); m > x && !most.CompareAndSwap(x, m); x = most.Load() {
			}
			// Wait for all four, or long enough for the walk to have
			// started all it may.
			for start := time.Now(); now.Load() < 4 && time.Since(start) < time.Second; {
				time.Sleep(time.Millisecond)
			}
			return nil
		}, nil)
	if err != nil || shards != 4 {
		t.Fatalf("%d shards, %v", shards, err)
	}
	if m := most.Load(); m > cutItems/per {
		t.Errorf("%d shards of %d images written at once, want at most %d", m, per, cutItems/per)
	}
}
