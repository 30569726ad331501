//! ovkd-segmenter
