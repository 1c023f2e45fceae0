package compose

import (
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"dcd/internal/devserver"
)

// The repository's docker-compose.yml hangs together: every dependency and
// volume exists, no host port is published twice, Temporal's UI and
// database and the S3 bucket setup point at services that exist, and the
// images build from stages the Dockerfile has, with the ONNX Runtime
// version scripts/setup.sh uses. Worker and starter commands are checked
// against the binaries in worker/ and starter/.
func TestComposeFileHangsTogether(t *testing.T) {
	f, err := Load("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"postgresql", "temporal", "temporal-ui", "s3", "s3-init", "worker-cpu", "worker-gpu", "starter"} {
		if _, ok := f.Services[name]; !ok {
			t.Errorf("no service %q", name)
		}
	}
	stages, args, err := DockerfileStages("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	published := map[string]string{}
	for name, s := range f.Services {
		for _, d := range s.DependsOn {
			if _, ok := f.Services[d]; !ok {
				t.Errorf("service %s depends on %q, which is not a service", name, d)
			}
		}
		for _, hp := range s.HostPorts() {
			if other, dup := published[hp]; dup {
				t.Errorf("host port %s published by %s and %s", hp, other, name)
			}
			published[hp] = name
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				if _, ok := f.Volumes[src]; !ok {
					t.Errorf("service %s mounts volume %q, which is not declared", name, src)
				}
			} else if _, err := os.Stat("../../" + src); err != nil {
				t.Errorf("service %s mounts %s: %v", name, src, err)
			}
		}
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		if b := s.Build; b != nil {
			if b.Context != "." || b.Dockerfile != "Dockerfile" {
				t.Errorf("service %s builds %s/%s, want the repository's Dockerfile", name, b.Context, b.Dockerfile)
			}
			if b.Target != "" && !slices.Contains(stages, b.Target) {
				t.Errorf("service %s builds target %q; the Dockerfile's stages are %q", name, b.Target, stages)
			}
		}
	}
	if err := f.CheckAddress("temporal-ui", "TEMPORAL_ADDRESS", f.Services["temporal-ui"].Environment["TEMPORAL_ADDRESS"]); err != nil {
		t.Error(err)
	}
	temporal := f.Services["temporal"]
	if db := temporal.Environment["POSTGRES_SEEDS"]; !slices.Contains(temporal.DependsOn, db) || f.Services[db].Image == "" ||
		!strings.HasPrefix(f.Services[db].Image, "postgres") {
		t.Errorf("temporal's POSTGRES_SEEDS %q is not the PostgreSQL service it depends on", db)
	}
	if temporal.Environment["POSTGRES_USER"] != f.Services["postgresql"].Environment["POSTGRES_USER"] ||
		temporal.Environment["POSTGRES_PWD"] != f.Services["postgresql"].Environment["POSTGRES_PASSWORD"] {
		t.Error("temporal's PostgreSQL user or password differs from the postgresql service's")
	}
	// The S3 server listens where the bucket setup and the workers look.
	s3 := f.Services["s3"]
	if i := slices.Index(s3.Command, "--port"); i < 0 || i+1 >= len(s3.Command) ||
		!slices.Contains(s3.ContainerPorts(), strings.TrimPrefix(s3.Command[i+1], ":")) {
		t.Errorf("s3 command %q does not listen on its published port %q", s3.Command, s3.Ports)
	}
	initCmd := strings.Join(f.Services["s3-init"].Command, " ")
	for _, m := range regexp.MustCompile(`--endpoint-url http://(\S+)`).FindAllStringSubmatch(initCmd, -1) {
		if err := f.CheckAddress("s3-init", "--endpoint-url", m[1]); err != nil {
			t.Error(err)
		}
	}
	if s3.Environment["ROOT_ACCESS_KEY_ID"] != f.Services["s3-init"].Environment["AWS_ACCESS_KEY_ID"] ||
		s3.Environment["ROOT_ACCESS_KEY_ID"] != f.Services["worker-cpu"].Environment["AWS_ACCESS_KEY_ID"] {
		t.Error("the S3 root access key differs between s3, s3-init and worker-cpu")
	}
	if !slices.Contains(f.Services["starter"].Profiles, "tools") {
		t.Error(`starter is not in profile "tools": "docker compose up" would run a pass`)
	}
	// The images fetch the ONNX Runtime that scripts/setup.sh fetches.
	setup, err := os.ReadFile("../../scripts/setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ort_version=(\S+)`).FindSubmatch(setup)
	if m == nil || args["ORT_VERSION"] != string(m[1]) {
		t.Errorf("Dockerfile ORT_VERSION %q, scripts/setup.sh ort_version %q", args["ORT_VERSION"], m)
	}
	// The build's Go is go.mod's: the golang images build with
	// GOTOOLCHAIN=local, so an older 1.26 cached locally would refuse
	// go.mod.
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m = regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(gomod)
	if m == nil || args["GO_VERSION"] != string(m[1]) {
		t.Errorf("Dockerfile GO_VERSION %q, go.mod's go %q", args["GO_VERSION"], m)
	}
	// And the GPU image the release scripts/setup-gpu.sh fetches, whose
	// CUDA provider was run on a GPU.
	setupGPU, err := os.ReadFile("../../scripts/setup-gpu.sh")
	if err != nil {
		t.Fatal(err)
	}
	m = regexp.MustCompile(`(?m)^version=(\S+)`).FindSubmatch(setupGPU)
	if m == nil || args["ORT_GPU_VERSION"] != string(m[1]) {
		t.Errorf("Dockerfile ORT_GPU_VERSION %q, scripts/setup-gpu.sh version %q", args["ORT_GPU_VERSION"], m)
	}
	m = regexp.MustCompile(`(?m)^providers_package=(\S+)`).FindSubmatch(setupGPU)
	if m == nil || args["ORT_GPU_PROVIDERS"] != string(m[1]) {
		t.Errorf("Dockerfile ORT_GPU_PROVIDERS %q, scripts/setup-gpu.sh providers_package %q", args["ORT_GPU_PROVIDERS"], m)
	}
}

func TestHelpers(t *testing.T) {
	got := FlagsInHelp("Usage of x:\n  -address string\n    \tTemporal (env TEMPORAL_ADDRESS)\n  -wait\n    \tshow progress\n")
	if !got["address"] || !got["wait"] || len(got) != 2 {
		t.Errorf("FlagsInHelp: %v", got)
	}
	if env := EnvNamesInText("x (env DCD_QUEUES) y (env DCD_EP; now cpu)"); !env["DCD_QUEUES"] || !env["DCD_EP"] || len(env) != 2 {
		t.Errorf("EnvNamesInText: %v", env)
	}
}

// The compose file's Temporal server runs with the dynamic configuration
// the dev server gets (devserver.DynamicConfig): the file its
// DYNAMIC_CONFIG_FILE_PATH names (relative to the image's /etc/temporal)
// is mounted from the repository and sets the same keys to the same values.
func TestTemporalDynamicConfig(t *testing.T) {
	f, err := Load("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	temporal := f.Services["temporal"]
	target := temporal.Environment["DYNAMIC_CONFIG_FILE_PATH"]
	if !path.IsAbs(target) {
		target = path.Join("/etc/temporal", target)
	}
	var src string
	for _, v := range temporal.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			src = parts[0]
		}
	}
	if src == "" {
		t.Fatalf("temporal's DYNAMIC_CONFIG_FILE_PATH %q is not among its mounts %q", target, temporal.Volumes)
	}
	data, err := os.ReadFile(filepath.Join("../..", src))
	if err != nil {
		t.Fatal(err)
	}
	var file map[string][]struct {
		Value       any            `yaml:"value"`
		Constraints map[string]any `yaml:"constraints"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	got := map[string]string{}
	for key, vs := range file {
		if len(vs) != 1 || len(vs[0].Constraints) > 0 {
			t.Errorf("%s: %s has %d values or constraints; the dev server sets one value for all", src, key, len(vs))
			continue
		}
		got[key] = fmt.Sprint(vs[0].Value)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(devserver.DynamicConfig); i += 2 {
		if devserver.DynamicConfig[i] != "--dynamic-config-value" {
			t.Fatalf("devserver.DynamicConfig[%d] = %q, want --dynamic-config-value", i, devserver.DynamicConfig[i])
		}
		key, value, _ := strings.Cut(devserver.DynamicConfig[i+1], "=")
		want[key] = value
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s sets %v; the dev server %v", src, got, want)
	}
}
