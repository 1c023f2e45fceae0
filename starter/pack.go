package main

import (
	"context"
	"fmt"

	"dcd/internal/dataset"
	"dcd/internal/store"
	"dcd/schemas"
)

const packSynopsis = "-prefix REF|-manifest REF [-storage URL] [-per-archive N] [-readers N] OUT"

type packArgs struct {
	storage             string
	source              schemas.Dataset
	out                 string
	perArchive, readers int
}

func parsePack(e *cli, args []string) (packArgs, error) {
	var a packArgs
	fs := e.flags("pack")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "the workers' bucket URL: keys are read and written there (env DCD_STORAGE)")
	fs.StringVar(&a.source.Prefix, "prefix", "", "the dataset to pack: an ImageFolder prefix (<prefix>/<label>/<file>), key or URL")
	fs.StringVar(&a.source.Manifest, "manifest", "", "the dataset to pack: a CSV or Parquet manifest (uri,label[,domain]), key or URL")
	fs.IntVar(&a.perArchive, "per-archive", 10000, "images per archive")
	fs.IntVar(&a.readers, "readers", 64, "image reads in flight; a remote store answers each after its latency (about as many images are held in memory)")
	out, err := oneArg(fs, packSynopsis, "output prefix", args)
	if err != nil {
		return a, err
	}
	a.out = out
	if (a.source.Prefix == "") == (a.source.Manifest == "") {
		return a, usageErrorf("pack: give the dataset as one of -prefix and -manifest")
	}
	if a.perArchive < 1 || a.readers < 1 {
		return a, usageErrorf("pack: -per-archive and -readers must be at least 1")
	}
	return a, nil
}

// cmdPack copies a dataset stored one object per image into WebDataset
// archives (dataset.Source.Pack), which a pass reads with one range read
// per MiB instead of one read per image.
func cmdPack(ctx context.Context, e *cli, args []string) error {
	a, err := parsePack(e, args)
	if err != nil {
		return err
	}
	b, err := store.Open(ctx, a.storage)
	if err != nil {
		return err
	}
	defer b.Close()
	res, err := dataset.Source{Bucket: b}.Pack(ctx, a.source, a.out, dataset.PackOptions{
		PerArchive: a.perArchive,
		Readers:    a.readers,
		Archived: func(archive string, n, packed int) {
			fmt.Fprintf(e.stderr, "%s: %d images (%d packed)\n", archive, n, packed)
		},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "packed %d images into %d archives under %s (%.1f MiB)\n", res.Images, len(res.Archives), a.out, float64(res.Bytes)/(1<<20))
	if res.Resumed > 0 {
		fmt.Fprintf(e.stdout, "resumed an interrupted pack: its first %d archives were written before\n", res.Resumed)
	}
	if n := len(res.Skipped); n > 0 {
		fmt.Fprintf(e.stdout, "skipped %d images, listed with the reason in skipped.csv beside the archives; the first: %s (%s)\n",
			n, res.Skipped[0].URI, res.Skipped[0].Reason)
	}
	fmt.Fprintf(e.stdout, "use it in a pass's config as:  webdataset: %s\n", a.out)
	return nil
}
