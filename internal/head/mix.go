package head

import "math/rand/v2"

// MixRows is the rows a Mixer's window holds: four feature files' of a
// pass's default shard size, 12 MiB of rows of 384 values, 64 MiB of
// 2,048. A number of rows, not of bytes or a share of retrain.memory_mb,
// so that a fit's rows come in the same order however they are held.
const MixRows = 8192

// A Mixer spreads rows that come in runs over a window of the rows around
// them, as a shuffle buffer does: each row added takes the place of one
// drawn at random from the window, which goes to fn. Rows read a file or
// a chunk at a time, shuffled within it, keep their files' runs otherwise:
// a debug set of one file's rows would make one or two mini-batches of
// debug rows alone an epoch, and the fit would depend on which came last.
// Determined by its rng. Reset readies one.
type Mixer struct {
	rng    *rand.Rand
	dim    int
	x      []float32
	label  []int
	weight []float32
	fn     func(x []float32, label int, weight float32) error
}

// Reset readies m for a pass over rows of dim values, drawn from rng to
// fn, keeping its window's memory from the pass before: a zero Mixer is
// ready after it. fn's x is valid during the call.
func (m *Mixer) Reset(rng *rand.Rand, dim int, fn func(x []float32, label int, weight float32) error) {
	m.rng, m.dim, m.fn = rng, dim, fn
	m.x, m.label, m.weight = m.x[:0], m.label[:0], m.weight[:0]
}

// Add puts a row into the window, giving fn one drawn from it once the
// window is full.
func (m *Mixer) Add(x []float32, label int, weight float32) error {
	if len(m.label) < MixRows { // grown as rows come: a small fit holds only its own
		m.x = append(m.x, x...)
		m.label = append(m.label, label)
		m.weight = append(m.weight, weight)
		return nil
	}
	i := m.rng.IntN(len(m.label))
	row := m.x[i*m.dim : (i+1)*m.dim]
	if err := m.fn(row, m.label[i], m.weight[i]); err != nil {
		return err
	}
	copy(row, x)
	m.label[i], m.weight[i] = label, weight
	return nil
}

// Flush gives fn the rows left in the window, in a random order, and
// empties it.
func (m *Mixer) Flush() error {
	for _, i := range m.rng.Perm(len(m.label)) {
		if err := m.fn(m.x[i*m.dim:(i+1)*m.dim], m.label[i], m.weight[i]); err != nil {
			return err
		}
	}
	m.x, m.label, m.weight = m.x[:0], m.label[:0], m.weight[:0]
	return nil
}
