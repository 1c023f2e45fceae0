package dataset

import (
	"context"
	"errors"
	"fmt"
	"reflect"
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
				p, err := src.Cut(context.Background(), schemas.Dataset{Manifest: "m.parquet"}, Progress{}, func(it Item, n int) bool { return EndsShard(it.Key, n, 2000) },
					func(context.Context, int, []byte) error { time.Sleep(latency); return nil }, nil)
				if err != nil || p.Mark.Next != n {
					b.Fatal(p, err)
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
	var progressed Progress
	p, err := src.Cut(context.Background(), schemas.Dataset{Prefix: "pool/"}, Progress{}, end, func(_ context.Context, i int, manifest []byte) error {
		sh, err := ParseShard(fmt.Sprint(i), manifest)
		mu.Lock()
		defer mu.Unlock()
		if written[i] != nil {
			t.Errorf("shard %d written twice", i)
		}
		written[i] = sh
		return err
	}, func(p Progress) { progressed = p })
	shards := p.Shards
	if err != nil || p.Mark.Next != int64(len(want)) || shards != len(written) || progressed != p || shards < 50 {
		t.Fatalf("cut %+v (%d written, progress %+v), %v; want %d images in about 100 shards", p, len(written), progressed, err, len(want))
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
	_, err = src.Cut(context.Background(), schemas.Dataset{Prefix: "pool/"}, Progress{}, end, func(_ context.Context, i int, _ []byte) error {
		if i == 7 {
			return full
		}
		return nil
	}, nil)
	if err != full {
		t.Errorf("a failed write: %v, want its error", err)
	}
}

// A Cut whose write failed goes on from the Progress it returned: the
// shards it wrote and those the second writes, from the next on, are the
// shards of a Cut that did not fail, though the first one's writes ended
// out of order.
func TestCutGoesOn(t *testing.T) {
	files := map[string]string{}
	for i := range 3000 {
		files[fmt.Sprintf("pool/%d/%05d.png", i%7, i)] = "x"
	}
	src := Source{Bucket: memBucket(t, files)}
	ds := schemas.Dataset{Prefix: "pool/"}
	end := func(it Item, n int) bool { return EndsShard(it.Key, n, 20) }
	var mu sync.Mutex
	shards := func(written map[int]string) func(context.Context, int, []byte) error {
		return func(_ context.Context, i int, manifest []byte) error {
			time.Sleep(time.Duration(i*7919%5) * time.Millisecond) // out of order
			mu.Lock()
			defer mu.Unlock()
			written[i] = string(manifest)
			return nil
		}
	}
	want := map[int]string{}
	whole, err := src.Cut(context.Background(), ds, Progress{}, end, shards(want), nil)
	if err != nil || whole.Shards < 100 {
		t.Fatalf("%+v, %v: want about 150 shards", whole, err)
	}

	got := map[int]string{}
	full := errors.New("store full")
	write := shards(got)
	p, err := src.Cut(context.Background(), ds, Progress{}, end, func(ctx context.Context, i int, manifest []byte) error {
		if i == whole.Shards/2 {
			return full
		}
		return write(ctx, i, manifest)
	}, nil)
	if err != full || p.Shards > whole.Shards/2 {
		t.Fatalf("cut to %+v, %v: want the failed write's error, and no shard from it on", p, err)
	}
	for i := range p.Shards {
		if got[i] != want[i] {
			t.Fatalf("shard %d before the failure differs from the whole cut's", i)
		}
	}
	again := map[int]string{}
	last, err := src.Cut(context.Background(), ds, p, end, shards(again), nil)
	if err != nil || last != whole {
		t.Fatalf("from %+v: cut to %+v, %v; want %+v", p, last, err, whole)
	}
	for i := range whole.Shards {
		if _, ok := again[i]; ok != (i >= p.Shards) {
			t.Fatalf("from %d shards written, shard %d written again: %v", p.Shards, i, ok)
		}
		if i >= p.Shards {
			got[i] = again[i]
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the two cuts' shards differ from the whole cut's")
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
	p, err := src.Cut(context.Background(), schemas.Dataset{Manifest: "m.csv"}, Progress{}, func(_ Item, n int) bool { return n == per },
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
	if err != nil || p.Shards != 4 {
		t.Fatalf("%+v, %v", p, err)
	}
	if m := most.Load(); m > cutItems/per {
		t.Errorf("%d shards of %d images written at once, want at most %d", m, per, cutItems/per)
	}
}
