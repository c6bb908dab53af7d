//! The HHH world: a small synthetic world with a known truth (facts, prompts, an oracle
//! that scores responses on helpfulness, honesty and harmlessness) and the simulated
//! annotator that labels from it. It gives every RLHF method an honest yardstick.
