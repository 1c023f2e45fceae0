package bench

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
)

// BenchmarkInferenceBeside measures what the CPUs left to ONNX Runtime
// cost it when they are busy: the demo backbone on one thread, alone,
// then beside a register-only loop, then beside PNG decoding, on every
// other CPU. Where CPUs share a physical core or its caches (SMT, a
// shared host), the neighbours slow inference even though none of them
// touches it, and no pipeline that decodes beside inference can then run
// at inference's full speed.
func BenchmarkInferenceBeside(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs a second CPU")
	}
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		b.Skip(err)
	}
	m := demoModel()
	model, err := m.graph.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	sess, err := ortrun.NewSession(m.name, model, []string{"image"}, []string{"features"}, ortrun.Options{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	const batch = 64
	input := make([]float32, batch*28*28)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range input {
		input[i] = rng.Float32()
	}
	pngs, err := digitPNGs(256)
	if err != nil {
		b.Fatal(err)
	}
	spec := preprocess.Spec{Channels: 1, Height: 28, Width: 28}
	loads := map[string]func(i int){
		"alone": nil,
		"busy_loop": func(int) {
			x := uint64(1)
			for range 1000 {
				x = x*6364136223846793005 + 1442695040888963407
			}
			runtime.KeepAlive(x)
		},
		"png_decode": func(i int) {
			img, _ := preprocess.Decode(pngs[i%len(pngs)])
			dst := make([]float32, spec.Size())
			spec.Fill(dst, img)
		},
	}
	for _, name := range []string{"alone", "busy_loop", "png_decode"} {
		b.Run(name, func(b *testing.B) {
			var stop atomic.Bool
			var wg sync.WaitGroup
			if load := loads[name]; load != nil {
				for range runtime.NumCPU() - 1 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; !stop.Load(); i++ {
							load(i)
						}
					}()
				}
			}
			for b.Loop() {
				if _, err := sess.Run(ortrun.Tensor{Shape: []int64{batch, 1, 28, 28}, Floats: input}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "images/s")
			stop.Store(true)
			wg.Wait()
		})
	}
}

// A case that inference alone runs in about minRun or more keeps its sizes;
// a faster one grows its shards to a pass's default size, then their
// number, until it would run minRun, in whole batches and at most
// maxShards, and in a multiple of the streams.
func TestEmbedCaseGrows(t *testing.T) {
	demo := embedCase{shards: 4, images: 2048, batch: 64}
	resnet := embedCase{shards: 2, images: 16, batch: 16}
	for _, tc := range []struct {
		name           string
		c              embedCase
		took           time.Duration
		streams        int
		shards, images int
	}{
		{"slow enough", demo, minRun, 2, 4, 2048},
		{"near enough", demo, minRun * 9 / 10, 2, 4, 2048},
		{"slower", resnet, 2 * time.Second, 2, 2, 16},
		{"twice too fast", demo, minRun / 2, 2, 8, 2048},
		{"small shards grow first", resnet, minRun / 10, 2, 2, 160},
		{"then in number", resnet, minRun / 400, 2, 8, defaultShardImages},
		{"at most maxShards", demo, minRun / 1000, 2, maxShards, 2048},
		{"a shard for every stream", resnet, 2 * time.Second, 4, 4, 16},
		{"as many for every stream", resnet, minRun / 400, 4, 8, defaultShardImages},
		{"under maxShards in streams", demo, minRun / 1000, 24, 48, 2048},
		{"objects keep theirs", embedCase{shards: 4, images: 2048, batch: 64, objects: true}, minRun / 100, 8, 4, 2048},
	} {
		shards, images := tc.c.grown(tc.c.shards, tc.c.images, tc.took, tc.streams)
		if shards != tc.shards || images != tc.images {
			t.Errorf("%s: grown(%v, %d streams) = %d shards of %d images, want %d of %d", tc.name, tc.took, tc.streams, shards, images, tc.shards, tc.images)
		}
		if images%tc.c.batch != 0 {
			t.Errorf("%s: %d images per shard is not whole batches of %d", tc.name, images, tc.c.batch)
		}
		if !tc.c.objects && shards%tc.streams != 0 {
			t.Errorf("%s: %d shards over %d streams", tc.name, shards, tc.streams)
		}
		if tc.took < minRun*4/5 && !tc.c.objects && shards+tc.streams <= maxShards && float64(shards*images) < float64(tc.c.shards*tc.c.images)*minRun.Seconds()/tc.took.Seconds()*4/5 {
			t.Errorf("%s: %d×%d images would run shorter than minRun", tc.name, shards, images)
		}
	}
}
