package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/client"
	"golang.org/x/sync/errgroup"

	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// Pack measures `starter pack` on the demo pool's shape: 20,000 MNIST
// digits stored one PNG object each in a file:// bucket and listed by a
// CSV manifest, packed by
// PackWorkflow on the dev server and a worker process into archives of
// 2,000, with the command's defaults otherwise. Its baseline reads the same
// objects alone in this process, DefaultPackReaders at once, as one
// archive's activity reads them: the ratio is what listing, writing the
// archives and orchestrating them leave of the reads' rate. It has no
// goal; a pool on a remote store is bound by its latency instead (see
// BenchmarkEmbedRemoteObjects).
func Pack(ctx context.Context, o Options) ([]Result, error) {
	images, per, reps := 20000, 2000, 3
	if o.Quick {
		images, per, reps = 2000, 500, 1
	}
	srv, stop, err := o.server(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	workerBin, err := o.worker(ctx)
	if err != nil {
		return nil, err
	}
	url := "file://" + filepath.ToSlash(filepath.Join(o.Dir, "pack")) + "?create_dir=1"
	bucket, err := store.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer bucket.Close()
	pngs, err := digitPNGs(images)
	if err != nil {
		return nil, err
	}
	pool, err := storeImages(ctx, bucket, "pool", pngs, "png", true)
	if err != nil {
		return nil, err
	}
	// A manifest lists them, as the demo's and a large pool's do.
	manifest := []byte("uri,label\n")
	for _, it := range pool.Items {
		manifest = fmt.Appendf(manifest, "/%s,%s\n", it.Key, it.Label)
	}
	if err := store.WriteAll(ctx, bucket, "pool.csv", manifest); err != nil {
		return nil, err
	}
	w, err := startWorker(ctx, o, workerBin, srv.hostport, url, "pack")
	if err != nil {
		return nil, err
	}
	defer w.stop()
	ctx, cancel := w.watch(ctx)
	defer cancel()

	run := 0
	pack := func() error {
		run++ // each into a prefix of its own: a pack over a whole one only checks it
		id := fmt.Sprintf("bench-pack-%d-%d", time.Now().UnixNano(), run)
		we, err := srv.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.PackWorkflow,
			workflows.PackInput{Dataset: schemas.Dataset{Manifest: "pool.csv"}, Out: fmt.Sprintf("packed/%d/", run), PerArchive: per})
		if err != nil {
			return err
		}
		var res workflows.PackResult
		if err := we.Get(ctx, &res); err != nil {
			return w.failed(fmt.Errorf("pack: %w", err))
		}
		if res.Packed != images {
			return fmt.Errorf("bench: packed %d images of %d", res.Packed, images)
		}
		return nil
	}
	read := func() error {
		var next atomic.Int64
		var g errgroup.Group
		for range workflows.DefaultPackReaders {
			g.Go(func() error {
				for i := next.Add(1) - 1; i < int64(len(pool.Items)); i = next.Add(1) - 1 {
					if _, err := store.ReadAll(ctx, bucket, pool.Items[i].Key); err != nil {
						return err
					}
				}
				return nil
			})
		}
		return g.Wait()
	}
	times, err := best(reps, labelled("pack_demo_objects/pack", pack), labelled("pack_demo_objects/read", read))
	if err != nil {
		return nil, err
	}
	rate := func(d time.Duration) float64 { return float64(images) / d.Seconds() }
	o.logf("pack: %d images one object each into archives of %d: %s; reading them alone, %d at once: %s",
		images, per, times[0].Round(time.Millisecond), workflows.DefaultPackReaders, times[1].Round(time.Millisecond))
	return []Result{info("pack_demo_objects", "images/s", rate(times[0]), rate(times[1]))}, nil
}
