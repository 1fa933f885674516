pragma circom 2.1.0;

// fednode update proof (docs/zk.md "Update proofs"): every v[i] is a signed K-bit integer and
// sum v[i]^2 <= bound2. v and blind are public inputs of the Groth16 proof but the verifier never
// sees them: the prover sends D = sum v[i] IC[4+i] + blind IC[4+N] and a link proof that D opens to
// the same (v, blind) as the update's Pedersen commitment. The main component is generated with
// {public [hash, bound2, v, blind]} in exactly this order (the verifying key's IC order).

// in == sum out[i] 2^i with every out[i] a bit: in is an integer in [0, 2^n).
template Bits(n) {
    signal input in;
    signal output out[n];
    var sum = 0;
    for (var i = 0; i < n; i++) {
        out[i] <-- (in >> i) & 1;
        out[i] * (out[i] - 1) === 0;
        sum += out[i] * (1 << i);
    }
    sum === in;
}

template UpdateBound(N, K, SB) {
    signal input hash[2];   // the commit hash as two 128-bit limbs (high, low)
    signal input bound2;    // B^2; the verifier requires bound2 < 2^SB
    signal input v[N];      // the committed vector, zero-padded to N
    signal input blind;     // the commitment's blinding
    signal sq[N];
    component bits[N];
    var acc = 0;
    for (var i = 0; i < N; i++) {
        bits[i] = Bits(K);
        bits[i].in <== v[i] + (1 << (K - 1));  // -2^(K-1) <= v[i] < 2^(K-1)
        sq[i] <== v[i] * v[i];
        acc += sq[i];
    }
    // acc < N 2^(2K-2) <= 2^SB and bound2 < 2^SB: bound2 - acc fits SB bits iff acc <= bound2
    component gap = Bits(SB);
    gap.in <== bound2 - acc;
    // keep the otherwise unconstrained public inputs in the constraint system
    signal hsq[2];
    hsq[0] <== hash[0] * hash[0];
    hsq[1] <== hash[1] * hash[1];
    signal bsq <== blind * blind;
}
