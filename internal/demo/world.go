package demo

import (
	"bytes"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"strconv"

	"dcd/internal/corrupt"
	"dcd/internal/mnist"
)

// example is one image of the world with its true label.
type example struct {
	img   *image.Gray
	label uint8
}

// poolExample is a pool image: what the manifest says (weak label, domain)
// besides the truth.
type poolExample struct {
	example
	weak   uint8
	domain string
}

// world is every image of the world, in the order they are numbered.
type world struct {
	train, test, sample, heldout []example
	pool                         []poolExample
}

const clean = "clean" // the pool domain of uncorrupted images

// Random streams of one seed: each choice draws from its own, so changing
// how one is made leaves the others as they were. Corrupted images each get
// their own stream (streamImage + part<<24 + index), which makes an image
// independent of the order in which images are made.
const (
	streamTestOrder uint64 = 1 + iota
	streamPoolDomains
	streamLabelNoise
	streamConv
	streamImage uint64 = 1 << 32
)

// Parts of the world whose images are corrupted, for streamImage.
const (
	partSample = 1 + iota
	partHeldout
	partPool
)

func (o Options) rng(stream uint64) *rand.Rand { return rand.New(rand.NewPCG(o.Seed, stream)) }

// side is MNIST's (and the model's) image width and height.
const side = 28

// plan makes every image of the world in memory.
func plan(o Options, train, test *mnist.Set) (*world, error) {
	if train.Len() < o.Train+o.Pool || test.Len() < o.Test || train.Rows != side || train.Cols != side || test.Rows != side || test.Cols != side {
		return nil, fmt.Errorf("demo: mnist has %d train and %d test images of %dx%d; want at least %d and %d of %dx%d",
			train.Len(), test.Len(), train.Cols, train.Rows, o.Train+o.Pool, o.Test, side, side)
	}
	sampleIdx, heldoutIdx, err := pickError(o, test)
	if err != nil {
		return nil, err
	}
	w := &world{
		train: cleanRange(train, 0, o.Train),
		test:  cleanRange(test, 0, o.Test),
	}
	if w.sample, err = corrupted(o, test, sampleIdx, partSample); err != nil {
		return nil, err
	}
	if w.heldout, err = corrupted(o, test, heldoutIdx, partHeldout); err != nil {
		return nil, err
	}
	if w.pool, err = makePool(o, train); err != nil {
		return nil, err
	}
	return w, nil
}

func cleanRange(s *mnist.Set, from, to int) []example {
	out := make([]example, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, example{s.Image(i), s.Labels[i]})
	}
	return out
}

// pickError chooses the MNIST test digits behind E: in a seeded shuffle, the
// first SamplePerClass of each class form E_sample, and the next Heldout of
// the others form E_heldout.
func pickError(o Options, test *mnist.Set) (sample, heldout []int, err error) {
	var perClass [classes]int
	var rest []int
	for _, i := range o.rng(streamTestOrder).Perm(test.Len()) {
		if c := test.Labels[i]; perClass[c] < o.SamplePerClass {
			perClass[c]++
			sample = append(sample, i)
			continue
		}
		rest = append(rest, i)
	}
	for c, n := range perClass {
		if n < o.SamplePerClass {
			return nil, nil, fmt.Errorf("demo: mnist test has %d images of class %d, sample_per_class wants %d", n, c, o.SamplePerClass)
		}
	}
	if len(rest) < o.Heldout {
		return nil, nil, fmt.Errorf("demo: %d mnist test images left for heldout %d", len(rest), o.Heldout)
	}
	return sample, rest[:o.Heldout], nil
}

func corrupted(o Options, s *mnist.Set, idx []int, part uint64) ([]example, error) {
	out := make([]example, len(idx))
	for j, i := range idx {
		img, err := corruptImage(o, o.Corruption, s.Image(i), part, j)
		if err != nil {
			return nil, err
		}
		out[j] = example{img, s.Labels[i]}
	}
	return out, nil
}

func corruptImage(o Options, name string, img *image.Gray, part uint64, i int) (*image.Gray, error) {
	out, err := corrupt.Apply(name, img, o.rng(streamImage+part<<24+uint64(i)))
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	return out, nil
}

// makePool takes MNIST train[Train:Train+Pool], gives seeded positions to E's
// corruption and to each other corruption, and replaces a seeded LabelNoise
// share of the labels by a different random class.
func makePool(o Options, train *mnist.Set) ([]poolExample, error) {
	domains := poolDomains(o)
	weak := weakLabels(o, train.Labels[o.Train:o.Train+o.Pool])
	pool := make([]poolExample, o.Pool)
	for p := range pool {
		i := o.Train + p
		img := train.Image(i)
		if domains[p] != clean {
			var err error
			if img, err = corruptImage(o, domains[p], img, partPool, p); err != nil {
				return nil, err
			}
		}
		pool[p] = poolExample{example{img, train.Labels[i]}, weak[p], domains[p]}
	}
	return pool, nil
}

func poolDomains(o Options) []string {
	domains := make([]string, o.Pool)
	for p := range domains {
		domains[p] = clean
	}
	order := o.rng(streamPoolDomains).Perm(o.Pool)
	assign := func(name string, share float64) {
		n := min(count(share, o.Pool), len(order))
		for _, p := range order[:n] {
			domains[p] = name
		}
		order = order[n:]
	}
	assign(o.Corruption, o.ErrorShare)
	for _, c := range o.Others {
		assign(c, o.OtherShare)
	}
	return domains
}

func weakLabels(o Options, truth []uint8) []uint8 {
	weak := append([]uint8(nil), truth...)
	rng := o.rng(streamLabelNoise)
	for _, p := range rng.Perm(len(weak))[:count(o.LabelNoise, len(weak))] {
		weak[p] = uint8((int(truth[p]) + 1 + rng.IntN(classes-1)) % classes)
	}
	return weak
}

func count(share float64, n int) int { return int(math.Round(share * float64(n))) }

// file is one object to write: an image to encode as PNG, or bytes.
type file struct {
	key  string
	img  *image.Gray
	data []byte
}

// files lists every object of the world but world.json, keys relative to
// the prefix.
func (w *world) files(model []byte) []file {
	var fs []file
	for _, split := range []struct {
		dir string
		ex  []example
	}{{"train", w.train}, {"test", w.test}, {"error_sample", w.sample}, {"error_heldout", w.heldout}} {
		for i, e := range split.ex {
			fs = append(fs, file{key: fmt.Sprintf("%s/%d/%05d.png", split.dir, e.label, i), img: e.img})
		}
	}
	var manifest, truth bytes.Buffer
	mw, tw := csv.NewWriter(&manifest), csv.NewWriter(&truth)
	// The manifest's version is the image's pixels' digest: a world
	// rebuilt at its prefix (another worldVersion, other pool options)
	// rewrites the images under the same keys, and cached features keyed
	// by key alone would be the old images'.
	mw.Write([]string{"uri", "label", "domain", "version"})
	tw.Write([]string{"uri", "true_label", "domain"})
	for p, e := range w.pool {
		uri := fmt.Sprintf("images/%05d.png", p)
		fs = append(fs, file{key: "pool/" + uri, img: e.img})
		sum := sha256.Sum256(e.img.Pix)
		mw.Write([]string{uri, strconv.Itoa(int(e.weak)), e.domain, hex.EncodeToString(sum[:8])})
		tw.Write([]string{uri, strconv.Itoa(int(e.label)), e.domain})
	}
	mw.Flush() // writes to a bytes.Buffer cannot fail
	tw.Flush()
	return append(fs,
		file{key: keyManifest, data: manifest.Bytes()},
		file{key: keyTruth, data: truth.Bytes()},
		file{key: keyModel, data: model})
}

// counts is World.Counts.
func (w *world) counts() map[string]int {
	c := map[string]int{
		"train":         len(w.train),
		"test":          len(w.test),
		"error_sample":  len(w.sample),
		"error_heldout": len(w.heldout),
		"pool":          len(w.pool),
	}
	c["pool/noisy_labels"] = 0
	for _, e := range w.pool {
		c["pool/"+e.domain]++
		if e.weak != e.label {
			c["pool/noisy_labels"]++
		}
	}
	return c
}
