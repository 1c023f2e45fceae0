package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// Plan measures planning's listing of a WebDataset pool on an object store
// behind the remote part's latency (a real S3 server and the delaying
// proxy): 1,000 archives of 50 samples (200 with Quick), walked as Plan
// walks them, in archives/s.
//
//   - plan_wds_cached: a recurring pass, the archives' sample lists cached
//     by the first. Baseline: the bench lists those cached lists and
//     reads them, dataset.ArchivesAhead at once.
//   - plan_wds_new: the first pass, which looks for each archive's cached
//     list, reads the archive whole and caches its list, in a bucket of its
//     own each time. Baseline: the bench makes the same three requests an
//     archive (a read of a missing object, the archive's, a write of the
//     list's size), dataset.ArchivesAhead archives at once.
//
// The ratio is what listing the archives and keeping their order leave of
// the store's rate at that many requests at once.
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
	o.logf("plan: walking them through a proxy that delays each request %s", s3.latency)
	times, err := best(reps,
		labelled("plan_wds_cached", func() error { return walk(cached) }), labelled("plan_wds_cached_reads", readCached),
		labelled("plan_wds_new", walkNew), labelled("plan_wds_new_reads", readNew))
	if err != nil {
		return nil, err
	}
	rate := func(d time.Duration) float64 { return float64(archives) / d.Seconds() }
	name := func(c string) string { return fmt.Sprintf("plan_wds_%s_s3_%s", c, s3.latencyName()) }
	return []Result{
		throughput(name("cached"), "archives/s", rate(times[0]), rate(times[1]), 0.8),
		throughput(name("new"), "archives/s", rate(times[2]), rate(times[3]), 0.8),
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
