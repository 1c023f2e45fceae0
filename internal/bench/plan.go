package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"github.com/apache/arrow/go/v15/parquet"
	"github.com/apache/arrow/go/v15/parquet/compress"
	"github.com/apache/arrow/go/v15/parquet/pqarrow"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// Plan measures planning's listing of a pool on an object store behind the
// remote part's latency (a real S3 server and the delaying proxy), as Plan
// walks it. The ratio is what the walk leaves of the store's rate at the
// same number of requests at once.
//
//   - plan_parquet: a Parquet manifest of 8 row groups of 2^20 images
//     (one with Quick), Snappy-compressed as pyarrow writes it, in
//     images/s. Baseline: the same walk from a file:// bucket.
//   - plan_parquet_cut: the same manifest cut into a pass's shards, their
//     manifests written to the store (dataset.Source.Cut, as Plan does),
//     in images/s, beside plan_parquet's walk. No goal: here the bytes
//     written (about 330 MB) cost this process, which runs the proxy, and
//     the server more CPU than two vCPUs have; BenchmarkCut in package
//     dataset measures the cut alone.
//   - plan_prefix: an ImageFolder of 48 labels of 1,500 images (16 with
//     Quick), in images/s. Baseline: the bench lists the labels, then
//     each label alone, store.FoldersAhead of them at once: an object
//     store lists a prefix a page of 1,000 keys at a time, one page after
//     the other.
//   - plan_prefix_small: an ImageFolder of 2,000 labels of 5 images (400
//     with Quick), an identity's photos each, in images/s. Baseline: the
//     bench lists it flat, which beats a request a label.
//   - plan_wds_cached: a WebDataset pool of 1,000 archives of 50 samples
//     (200 with Quick) on a recurring pass, their sample lists cached by
//     the first, in archives/s. Baseline: the bench lists those cached
//     lists and reads them, dataset.ArchivesAhead at once.
//   - plan_wds_new: the same archives on a first pass, which looks for
//     each archive's cached list, reads the archive whole and caches its
//     list, in a bucket of its own each time. Baseline: the bench makes
//     the same three requests an archive (a read of a missing object, the
//     archive's, a write of the list's size), dataset.ArchivesAhead
//     archives at once.
func Plan(ctx context.Context, o Options) ([]Result, error) {
	archives, samples, reps := 1000, 50, 3
	if o.Quick {
		archives, reps = 200, 1
	}
	s3, err := startRemote(ctx, o, "plan")
	if err != nil {
		return nil, err
	}
	defer s3.stop()
	direct, err := store.Open(ctx, s3.direct)
	if err != nil {
		return nil, err
	}
	defer direct.Close()
	o.logf("plan: writing %d archives of %d samples", archives, samples)
	if err := writeArchives(ctx, direct, "pool-wds/", archives, samples); err != nil {
		return nil, err
	}
	pool, err := store.JoinURL(s3.proxied, "pool-wds/")
	if err != nil {
		return nil, err
	}
	cached, err := store.Open(ctx, s3.proxied)
	if err != nil {
		return nil, err
	}
	defer cached.Close()
	walk := func(b *blob.Bucket) error {
		n := 0
		err := dataset.Source{Bucket: b}.Walk(ctx, schemas.Dataset{WebDataset: pool}, func(dataset.Item) error {
			n++
			return nil
		})
		if err == nil && n != archives*samples {
			err = fmt.Errorf("bench: plan: walked %d samples, want %d", n, archives*samples)
		}
		return err
	}
	if err := walk(cached); err != nil { // caches the sample lists
		return nil, err
	}
	// Each first walk caches its lists in a bucket of its own.
	fresh := 0
	freshBucket := func() (*blob.Bucket, error) {
		fresh++
		url, err := s3.bucket(ctx, fmt.Sprintf("plan-new-%d", fresh))
		if err != nil {
			return nil, err
		}
		return store.Open(ctx, url)
	}
	walkNew := func() error {
		b, err := freshBucket()
		if err != nil {
			return err
		}
		defer b.Close()
		return walk(b)
	}
	readNew := func() error {
		b, err := freshBucket()
		if err != nil {
			return err
		}
		defer b.Close()
		index := bytes.Repeat([]byte("x"), samples*40)
		return eachObject(ctx, cached, "pool-wds/", func(ctx context.Context, key string) error {
			if _, err := store.ReadAll(ctx, b, "webdataset/"+key); gcerrors.Code(err) != gcerrors.NotFound {
				return fmt.Errorf("bench: plan: %s: want a missing list, got %v", key, err)
			}
			if _, err := store.ReadAll(ctx, cached, key); err != nil {
				return err
			}
			return store.WriteAll(ctx, b, "webdataset/"+key, index)
		})
	}
	readCached := func() error {
		return eachObject(ctx, cached, "webdataset/", func(ctx context.Context, key string) error {
			_, err := store.ReadAll(ctx, cached, key)
			return err
		})
	}
	labels, per := 48, 1500
	if o.Quick {
		labels = 16
	}
	if err := writeFolders(ctx, o, direct, "pool/", labels, per); err != nil {
		return nil, err
	}
	small, smallPer := 2000, 5
	if o.Quick {
		small = 400
	}
	if err := writeFolders(ctx, o, direct, "small/", small, smallPer); err != nil {
		return nil, err
	}
	walkFolder := func(prefix string, images int) func() error {
		return func() error {
			folder, err := store.JoinURL(s3.proxied, prefix)
			if err != nil {
				return err
			}
			last, n := "", 0
			err = dataset.Source{Bucket: cached}.Walk(ctx, schemas.Dataset{Prefix: folder}, func(it dataset.Item) error {
				if it.Key <= last {
					return fmt.Errorf("bench: plan: %s listed after %s", it.Key, last)
				}
				last = it.Key
				n++
				return nil
			})
			if err == nil && n != images {
				err = fmt.Errorf("bench: plan: walked %d images of %s, want %d", n, prefix, images)
			}
			return err
		}
	}
	listFlat := func() error {
		return store.List(ctx, cached, &blob.ListOptions{Prefix: "small/"}, func(*blob.ListObject) error { return nil })
	}
	listLabels := func() error {
		var g errgroup.Group
		g.SetLimit(store.FoldersAhead)
		err := store.List(ctx, cached, &blob.ListOptions{Prefix: "pool/", Delimiter: "/"}, func(label *blob.ListObject) error {
			g.Go(func() error {
				return store.List(ctx, cached, &blob.ListOptions{Prefix: label.Key}, func(*blob.ListObject) error { return nil })
			})
			return nil
		})
		return errors.Join(err, g.Wait())
	}

	rows := 8 << 20
	if o.Quick {
		rows = 1 << 20
	}
	o.logf("plan: writing a Parquet manifest of %d images", rows)
	manifest, err := parquetManifest(rows)
	if err != nil {
		return nil, err
	}
	local, err := store.Open(ctx, "file://"+filepath.ToSlash(filepath.Join(o.Dir, "plan"))+"?create_dir=1")
	if err != nil {
		return nil, err
	}
	defer local.Close()
	for _, b := range []*blob.Bucket{direct, local} {
		if err := store.WriteAll(ctx, b, "pool.parquet", manifest); err != nil {
			return nil, err
		}
	}
	walkManifest := func(b *blob.Bucket) func() error {
		return func() error {
			n := 0
			err := dataset.Source{Bucket: b}.Walk(ctx, schemas.Dataset{Manifest: "pool.parquet"}, func(dataset.Item) error {
				n++
				return nil
			})
			if err == nil && n != rows {
				err = fmt.Errorf("bench: plan: walked %d images of the manifest, want %d", n, rows)
			}
			return err
		}
	}

	// Cutting the manifest into the shards of a pass, written to the store.
	shardSize := schemas.Config{}.WithDefaults().Shards.Size
	cuts := 0
	cut := func() error {
		cuts++
		p, err := dataset.Source{Bucket: cached}.Cut(ctx, schemas.Dataset{Manifest: "pool.parquet"}, dataset.Progress{}, func(it dataset.Item, n int) bool {
			return dataset.EndsShard(it.Key, n, shardSize)
		}, func(ctx context.Context, i int, manifest []byte) error {
			return store.WriteAll(ctx, cached, fmt.Sprintf("cut/%d/%d.csv", cuts, i), manifest)
		}, nil)
		if err == nil && p.Mark.Next != int64(rows) {
			err = fmt.Errorf("bench: plan: cut %d images of the manifest, want %d", p.Mark.Next, rows)
		}
		return err
	}

	o.logf("plan: walking them through a proxy that delays each request %s", s3.latency)
	times, err := best(reps,
		labelled("plan_parquet", walkManifest(cached)), labelled("plan_parquet_local", walkManifest(local)), labelled("plan_parquet_cut", cut),
		labelled("plan_prefix", walkFolder("pool/", labels*per)), labelled("plan_prefix_lists", listLabels),
		labelled("plan_prefix_small", walkFolder("small/", small*smallPer)), labelled("plan_prefix_small_list", listFlat),
		labelled("plan_wds_cached", func() error { return walk(cached) }), labelled("plan_wds_cached_reads", readCached),
		labelled("plan_wds_new", walkNew), labelled("plan_wds_new_reads", readNew))
	if err != nil {
		return nil, err
	}
	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	name := func(c string) string { return fmt.Sprintf("plan_%s_s3_%s", c, s3.latencyName()) }
	images := labels * per
	return []Result{
		throughput(name("parquet"), "images/s", rate(rows, times[0]), rate(rows, times[1]), 0.8),
		info(name("parquet_cut"), "images/s", rate(rows, times[2]), rate(rows, times[0])),
		throughput(name("prefix"), "images/s", rate(images, times[3]), rate(images, times[4]), 0.8),
		throughput(name("prefix_small"), "images/s", rate(small*smallPer, times[5]), rate(small*smallPer, times[6]), 0.8),
		throughput(name("wds_cached"), "archives/s", rate(archives, times[7]), rate(archives, times[8]), 0.8),
		throughput(name("wds_new"), "archives/s", rate(archives, times[9]), rate(archives, times[10]), 0.8),
	}, nil
}

// writeArchives writes n archives of per samples under prefix of b, each
// image a few bytes: listing reads only the archives' tar headers.
func writeArchives(ctx context.Context, b *blob.Bucket, prefix string, n, per int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			var buf bytes.Buffer
			w := webdataset.NewWriter(&buf)
			for j := range per {
				if err := w.Write(fmt.Sprintf("%09d", i*per+j), "png", []byte("not decoded"), fmt.Sprint(j%10), ""); err != nil {
					return err
				}
			}
			if err := w.Close(); err != nil {
				return err
			}
			return store.WriteAll(gctx, b, fmt.Sprintf("%s%06d.tar", prefix, i), buf.Bytes())
		})
	}
	return g.Wait()
}

// parquetManifest is a manifest of n images in 100 labels and 4 domains,
// written as pyarrow writes one by default: row groups of 2^20 rows,
// dictionaries, Snappy.
func parquetManifest(n int) ([]byte, error) {
	const group = 1 << 20
	mem := memory.NewGoAllocator()
	sc := arrow.NewSchema([]arrow.Field{
		{Name: "uri", Type: arrow.BinaryTypes.String},
		{Name: "label", Type: arrow.BinaryTypes.String},
		{Name: "domain", Type: arrow.BinaryTypes.String},
	}, nil)
	var buf bytes.Buffer
	props := parquet.NewWriterProperties(parquet.WithAllocator(mem), parquet.WithCompression(compress.Codecs.Snappy), parquet.WithMaxRowGroupLength(group))
	w, err := pqarrow.NewFileWriter(sc, &buf, props, pqarrow.DefaultWriterProps())
	if err != nil {
		return nil, fmt.Errorf("bench: plan: write the manifest: %w", err)
	}
	rb := array.NewRecordBuilder(mem, sc)
	defer rb.Release()
	for first := 0; first < n; first += group {
		for i := first; i < min(first+group, n); i++ {
			rb.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("/pool/%03d/%09d.jpg", i%100, i))
			rb.Field(1).(*array.StringBuilder).Append(fmt.Sprint(i % 100))
			rb.Field(2).(*array.StringBuilder).Append([]string{"day", "night", "fog", "rain"}[i%4])
		}
		rec := rb.NewRecord()
		err := w.Write(rec)
		rec.Release()
		if err != nil {
			return nil, fmt.Errorf("bench: plan: write the manifest: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("bench: plan: write the manifest: %w", err)
	}
	return buf.Bytes(), nil
}

// writeFolders writes an ImageFolder of labels folders of per empty
// images under prefix of b.
func writeFolders(ctx context.Context, o Options, b *blob.Bucket, prefix string, labels, per int) error {
	o.logf("plan: writing an ImageFolder of %d labels of %d images under %s", labels, per, prefix)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range labels * per {
		g.Go(func() error {
			return store.WriteAll(gctx, b, fmt.Sprintf("%s%05d/%07d.png", prefix, i%labels, i), nil)
		})
	}
	return g.Wait()
}

// eachObject lists prefix of b and calls fn for each object,
// dataset.ArchivesAhead at once.
func eachObject(ctx context.Context, b *blob.Bucket, prefix string, fn func(ctx context.Context, key string) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(dataset.ArchivesAhead)
	err := store.List(gctx, b, &blob.ListOptions{Prefix: prefix}, func(obj *blob.ListObject) error {
		g.Go(func() error { return fn(gctx, obj.Key) })
		return nil
	})
	return errors.Join(err, g.Wait())
}
