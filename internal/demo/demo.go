// Package demo builds a small, known-to-work DCD world from MNIST and writes
// it into blob storage exactly as a user's own data would be laid out.
//
// A debug pass needs a classifier that fails on some shift E, a labeled
// sample of those failures, a held-out set from E, the clean train and test
// sets and a big weakly-labeled pool that hides some images from E. No
// pretrained model can be downloaded here, so the world is made from scratch
// (DESIGN.md §6): MNIST digits, E one of the corruptions of package corrupt,
// and a target model ("A256") whose backbone is fixed random convolutions and
// a PCA projection, with a softmax head fitted on the clean train features.
// Everything follows from Options, the seed included, so two builds with the
// same options write the same bytes, and the pass that runs over the world
// goes through the same listing, decoding and ONNX code as a real one.
//
// # Layout
//
// Under Options.Prefix, Build writes ImageFolder datasets
// (<split>/<label>/<5-digit index>.png, 8-bit gray) for train/, test/,
// error_sample/ and error_heldout/; the pool as pool/images/<index>.png with
// a CSV manifest pool/manifest.csv (uri,label,domain: weak label, "clean" or
// the corruption) and its ground truth pool/truth.csv
// (uri,true_label,domain); the target model models/target.onnx (input
// "image" [N,1,28,28] in [0,1], outputs "features" [N,256] and "logits"
// [N,10]); and, last, world.json (see World).
//
// # Errors
//
// Options are checked before anything is read or written. Build fails when
// the MNIST files cannot be read, when a write fails, or when the target
// model is below 0.9 accuracy on the clean test set, since a world whose
// model is bad on clean data demonstrates nothing.
package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"dcd/internal/corrupt"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/schemas"
)

// Options shape the world. A zero field takes its default (WithDefaults), so
// a share cannot be asked to be exactly 0.
type Options struct {
	Seed uint64 `json:"seed"` // default 1
	// Corruption is E's shift (default "blur"), one of corrupt.Names().
	Corruption string `json:"corruption"`
	// Others are the other corruptions hidden in the pool; default: the first
	// three of noise, invert, contrast, fog, rot90 that differ from Corruption.
	Others []string `json:"others"`
	// Train clean train images (default 10000): MNIST train[0:Train].
	Train int `json:"train"`
	// Pool size (default 20000): MNIST train[Train:Train+Pool].
	Pool int `json:"pool"`
	// ErrorShare of the pool is corrupted with Corruption (default 0.05).
	ErrorShare float64 `json:"error_share"`
	// OtherShare of the pool goes to each of Others (default 0.05).
	OtherShare float64 `json:"other_share"`
	// LabelNoise of the pool's weak labels are replaced by a different,
	// uniformly random class (default 0.3).
	LabelNoise float64 `json:"label_noise"`
	// SamplePerClass E_sample images per class (default 10), corrupted
	// MNIST test images.
	SamplePerClass int `json:"sample_per_class"`
	// Heldout E_heldout images (default 2000): other corrupted MNIST test
	// images.
	Heldout int `json:"heldout"`
	// Test clean test images (default 10000): MNIST test[0:Test]. They may
	// share base digits with E, as in the study the numbers come from.
	Test int `json:"test"`
	// Prefix is the key prefix of the world in the bucket; default
	// "demo/<corruption>-s<seed>-<hash of the other options>/".
	Prefix string `json:"prefix"`
}

// defaultOthers is the order in which other corruptions fill the pool: the
// DESIGN.md §6 study's corruptions, the ones known to separate in A256's
// feature space.
var defaultOthers = []string{"noise", "invert", "contrast", "fog", "rot90"}

// WithDefaults fills every zero field.
func (o Options) WithDefaults() Options {
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Corruption == "" {
		o.Corruption = "blur"
	}
	if len(o.Others) == 0 {
		o.Others = nil
		for _, c := range defaultOthers {
			if c != o.Corruption && len(o.Others) < 3 {
				o.Others = append(o.Others, c)
			}
		}
	}
	o.Train = orInt(o.Train, 10000)
	o.Pool = orInt(o.Pool, 20000)
	o.ErrorShare = orFloat(o.ErrorShare, 0.05)
	o.OtherShare = orFloat(o.OtherShare, 0.05)
	o.LabelNoise = orFloat(o.LabelNoise, 0.3)
	o.SamplePerClass = orInt(o.SamplePerClass, 10)
	o.Heldout = orInt(o.Heldout, 2000)
	o.Test = orInt(o.Test, 10000)
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("demo/%s-s%d-%s/", o.Corruption, o.Seed, o.hash())
	} else if o.Prefix[len(o.Prefix)-1] != '/' {
		o.Prefix += "/"
	}
	return o
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func orFloat(v, def float64) float64 {
	if v == 0 {
		return def
	}
	return v
}

// hash names the world in the default prefix, so that worlds built with
// different options never overwrite one another.
func (o Options) hash() string {
	o.Prefix = ""
	b, _ := json.Marshal(o) // a struct of plain fields always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:4])
}

// MNIST's split sizes bound the options.
const (
	mnistTrain = 60000
	mnistTest  = 10000
	classes    = 10
)

func (o Options) validate() error {
	known := corrupt.Names()
	if !slices.Contains(known, o.Corruption) {
		return fmt.Errorf("demo: corruption %q is not one of %q", o.Corruption, known)
	}
	for i, c := range o.Others {
		if !slices.Contains(known, c) {
			return fmt.Errorf("demo: others[%d] %q is not one of %q", i, c, known)
		}
		if c == o.Corruption || slices.Index(o.Others, c) != i {
			return fmt.Errorf("demo: others[%d] %q repeats a corruption", i, c)
		}
	}
	switch {
	case o.Train < 1 || o.Pool < 1 || o.Test < 1 || o.SamplePerClass < 1 || o.Heldout < 1:
		return fmt.Errorf("demo: train %d, pool %d, test %d, sample_per_class %d and heldout %d must all be positive",
			o.Train, o.Pool, o.Test, o.SamplePerClass, o.Heldout)
	case o.Train+o.Pool > mnistTrain:
		return fmt.Errorf("demo: train %d + pool %d exceeds MNIST's %d train images", o.Train, o.Pool, mnistTrain)
	case o.Test > mnistTest:
		return fmt.Errorf("demo: test %d exceeds MNIST's %d test images", o.Test, mnistTest)
	case classes*o.SamplePerClass+o.Heldout > mnistTest:
		return fmt.Errorf("demo: %d sample + %d heldout images exceed MNIST's %d test images",
			classes*o.SamplePerClass, o.Heldout, mnistTest)
	case !share(o.ErrorShare) || !share(o.OtherShare) || !share(o.LabelNoise):
		return fmt.Errorf("demo: error_share %g, other_share %g and label_noise %g must be in [0, 1]",
			o.ErrorShare, o.OtherShare, o.LabelNoise)
	case o.ErrorShare+float64(len(o.Others))*o.OtherShare > 1:
		return fmt.Errorf("demo: error_share %g + %d others × other_share %g exceed the whole pool",
			o.ErrorShare, len(o.Others), o.OtherShare)
	}
	return nil
}

func share(v float64) bool { return v >= 0 && v <= 1 }

// World is what world.json records: the options it was built with, how many
// images each part holds, and how the target model does before any
// debugging.
type World struct {
	// Version is worldVersion when it was built.
	Version int     `json:"version"`
	Options Options `json:"options"`
	// Counts per split ("train", "test", "error_sample", "error_heldout",
	// "pool"), per pool domain ("pool/<domain>") and "pool/noisy_labels".
	Counts map[string]int `json:"counts"`
	// CleanTestAccuracy and ErrorHeldoutAccuracy are the target model's,
	// measured when the world was built.
	CleanTestAccuracy    float64 `json:"clean_test_accuracy"`
	ErrorHeldoutAccuracy float64 `json:"error_heldout_accuracy"`
}

// worldVersion is the version of what Build writes for given options: a
// change to the corruptions, the backbone or the head's recipe bumps it,
// so that a world built by earlier code is built again, not reused. 2:
// the pool manifest's version column.
const worldVersion = 2

// Keys relative to the prefix.
const (
	keyWorld    = "world.json"
	keyModel    = "models/target.onnx"
	keyManifest = "pool/manifest.csv"
	keyTruth    = "pool/truth.csv"
)

// minCleanAccuracy is the least clean-test accuracy a usable world has;
// DESIGN.md §6 measures 0.975 at full size.
const minCleanAccuracy = 0.9

// Build writes the world under o.Prefix (after WithDefaults) and returns the
// pass config that uses it. It is idempotent: when world.json already records
// the same options it returns at once. world.json is written last, so a build
// cut short is redone; ort sets the threads of the sessions that fit the
// model.
func Build(ctx context.Context, b *blob.Bucket, mnistDir string, o Options, ort ortrun.Options) (schemas.Config, error) {
	o = o.WithDefaults()
	if err := o.validate(); err != nil {
		return schemas.Config{}, err
	}
	cfg := o.config()
	if err := cfg.Validate(); err != nil {
		return schemas.Config{}, fmt.Errorf("demo: config: %w", err)
	}
	done, err := built(ctx, b, o)
	if err != nil || done {
		return cfg, err
	}
	train, test, err := mnist.Load(mnistDir)
	if err != nil {
		return schemas.Config{}, fmt.Errorf("demo: %w", err)
	}
	w, err := plan(o, train, test)
	if err != nil {
		return schemas.Config{}, err
	}
	m, err := fitModel(o, w, ort)
	if err != nil {
		return schemas.Config{}, err
	}
	if err := sweep(ctx, b, o.Prefix); err != nil {
		return schemas.Config{}, err
	}
	if err := writeFiles(ctx, b, o.Prefix, w.files(m.onnx)); err != nil {
		return schemas.Config{}, err
	}
	world := World{Version: worldVersion, Options: o, Counts: w.counts(), CleanTestAccuracy: m.cleanAcc, ErrorHeldoutAccuracy: m.errorAcc}
	data, err := json.MarshalIndent(world, "", "  ")
	if err != nil {
		return schemas.Config{}, fmt.Errorf("demo: %w", err)
	}
	if err := write(ctx, b, o.Prefix+keyWorld, data); err != nil {
		return schemas.Config{}, err
	}
	return cfg, nil
}

// built reports whether a finished world with the same options is at
// o.Prefix.
func built(ctx context.Context, b *blob.Bucket, o Options) (bool, error) {
	key := o.Prefix + keyWorld
	data, err := b.ReadAll(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("demo: read %q: %w", key, err)
	}
	var w World
	if err := json.Unmarshal(data, &w); err != nil {
		return false, nil // not ours or damaged: build over it
	}
	want, _ := json.Marshal(o)
	got, _ := json.Marshal(w.Options)
	return w.Version == worldVersion && bytes.Equal(want, got), nil
}

// sweep deletes what an earlier, different or unfinished world left under
// prefix, world.json first, so that no stale image is listed in an
// ImageFolder split and no reader takes a half-built world for a finished
// one. Only the folders the layout owns are touched.
func sweep(ctx context.Context, b *blob.Bucket, prefix string) error {
	if err := b.Delete(ctx, prefix+keyWorld); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("demo: delete %q: %w", prefix+keyWorld, err)
	}
	for _, dir := range []string{"train/", "test/", "error_sample/", "error_heldout/", "pool/", "models/"} {
		it := b.List(&blob.ListOptions{Prefix: prefix + dir})
		for {
			obj, err := it.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("demo: list %q: %w", prefix+dir, err)
			}
			if err := b.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return fmt.Errorf("demo: delete %q: %w", obj.Key, err)
			}
		}
	}
	return nil
}

// config is the pass over the world: DCD's selection on the target's own
// features, graded against the E domain recorded in the pool manifest.
func (o Options) config() schemas.Config {
	labels := make([]string, classes)
	for c := range labels {
		labels[c] = strconv.Itoa(c)
	}
	p := o.Prefix
	return schemas.Config{
		Name:    "demo-" + o.Corruption,
		Seed:    o.Seed,
		Classes: labels,
		Target: schemas.Model{
			Path:     p + keyModel,
			Input:    inputName,
			Features: featuresName,
			Logits:   logitsName,
			Preprocess: preprocess.Spec{
				Layout: preprocess.LayoutNCHW, Channels: 1, Height: side, Width: side,
				Resize: preprocess.ResizeSquash, Scale: preprocess.ScaleUnit,
			},
		},
		Data: schemas.Data{
			Train:        schemas.Dataset{Prefix: p + "train/"},
			Test:         schemas.Dataset{Prefix: p + "test/"},
			ErrorSample:  schemas.Dataset{Prefix: p + "error_sample/"},
			ErrorHeldout: schemas.Dataset{Prefix: p + "error_heldout/"},
			Pool:         schemas.Dataset{Manifest: p + keyManifest},
		},
		Selection: schemas.Selection{K: 10, ErrorDomain: o.Corruption},
		Retrain:   schemas.Retrain{Lambda: 0.01, Iters: 300},
	}.WithDefaults()
}
