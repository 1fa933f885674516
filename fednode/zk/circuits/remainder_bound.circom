pragma circom 2.1.0;

// fednode remainder proof (docs/zk.md "Remainder proofs"): a FedAvg merge's remainder r = S - W d
// satisfies |2 r[i]| <= W for every i, i.e. d = S / W rounded to nearest. The public inputs have the
// layout of update_bound.circom, with W (the merge's total weight) where B^2 stands, so the same
// verifier (fednode.zk.update_proof.verify, programs/sdk/zk_update_proof.h) checks it with this
// circuit's verifying key, whose sb = K - 1 bounds W. r and blind are public inputs the verifier
// never sees (D and the link proof, as for updates). Main: {public [hash, total, r, blind]}.

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

template RemainderBound(N, K) {
    signal input hash[2];   // the merge's proof hash as two 128-bit limbs (high, low)
    signal input total;     // W, the sum of the merge's weights: 0 <= W < 2^(K-1)
    signal input r[N];      // the committed remainder, zero-padded to N
    signal input blind;     // the commitment's blinding
    component w = Bits(K - 1);
    w.in <== total;
    var half = 0;  // floor(W / 2)
    for (var j = 1; j < K - 1; j++) {
        half += w.out[j] * (1 << (j - 1));
    }
    component lo[N];
    component hi[N];
    for (var i = 0; i < N; i++) {
        // r[i] + floor(W/2) in [0, 2^(K-1)): r[i] is an integer >= -W/2, and W + 2 r[i] (= 2 lo + W's
        // low bit) lies in [0, 2^K); then W - 2 r[i] in [0, 2^K): r[i] <= W/2. No value wraps the field.
        lo[i] = Bits(K - 1);
        lo[i].in <== r[i] + half;
        hi[i] = Bits(K);
        hi[i].in <== total - 2 * r[i];
    }
    // keep the otherwise unconstrained public inputs in the constraint system
    signal hsq[2];
    hsq[0] <== hash[0] * hash[0];
    hsq[1] <== hash[1] * hash[1];
    signal bsq <== blind * blind;
}
