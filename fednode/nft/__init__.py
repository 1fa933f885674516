"""A repository's NFT as wallets show it: the metadata document (``document``), the picture
(``image``, drawn with our own ``font`` and ``png`` encoder), both read from one ``summary`` of the
history and stored as public IPFS files (``publish``). The mint itself is ``fednode.chain.nftmint``."""
